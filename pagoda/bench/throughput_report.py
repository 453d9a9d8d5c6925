"""The report of a `pagoda bench throughput` run (fixed shapes, mix runs, machine and load) and the
files it is written to: throughput.json, throughput_vs_batch.png and latency_cdf.png; the fixed-shape
table it prints.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from pagoda.bench.fixed_shape import FixedShapeResult
from pagoda.bench.request_mix import MixResult, plot_latency_cdfs


@dataclass
class BenchReport:
    date: str
    machine: str
    model: str
    num_threads: int
    fixed_shape: list[FixedShapeResult] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # system -> why it was not measured
    mix: list[MixResult] = field(default_factory=list)
    # other processes on the machine skew every figure: the 1-minute load average says how much
    load_average: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0


def write_outputs(report: BenchReport, batch_sizes: Sequence[int], out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    record = {
        "date": report.date, "machine": report.machine, "model": report.model,
        "num_threads": report.num_threads, "load_average": report.load_average, "wall_s": report.wall_s,
        "fixed_shape": [dict(asdict(r), tokens_per_s=r.tokens_per_s) for r in report.fixed_shape],
        "unavailable": report.unavailable,
        "mix": [{"batching": m.batching, "summary": m.summary(),
                 "request_rate": m.request_rate if math.isfinite(m.request_rate) else "inf",
                 "kv": dict(asdict(m.kv), paged_utilisation=m.kv.utilisation(m.kv.paged_slot_steps),
                            contiguous_utilisation=m.kv.utilisation(m.kv.contiguous_slot_steps),
                            reserved_utilisation=m.kv.utilisation(m.kv.reserved_slot_steps)),
                 "requests": [asdict(r) for r in m.requests]} for m in report.mix],
    }
    paths = [os.path.join(out_dir, "throughput.json")]
    with open(paths[0], "w") as f:
        json.dump(record, f, indent=1)
    if report.fixed_shape:
        paths.append(os.path.join(out_dir, "throughput_vs_batch.png"))
        plot_throughput(report, batch_sizes, paths[-1])
    if report.mix:
        paths.append(os.path.join(out_dir, "latency_cdf.png"))
        plot_latency_cdfs([m for m in report.mix if math.isfinite(m.request_rate)], paths[-1])
    return paths


# -- printing ------------------------------------------------------------------------------------------
def format_fixed_table(report: BenchReport, batch_sizes: Sequence[int]) -> str:
    systems = list(dict.fromkeys(r.system for r in report.fixed_shape)) + list(report.unavailable)
    by = {(r.system, r.batch_size): r.tokens_per_s for r in report.fixed_shape}
    header = ["B", *systems]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for b in batch_sizes:
        cells = [str(b)] + [f"{by[s, b]:.1f}" if (s, b) in by else "n/a" for s in systems]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------------------
def plot_throughput(report: BenchReport, batch_sizes: Sequence[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for system in dict.fromkeys(r.system for r in report.fixed_shape):
        rows = sorted((r.batch_size, r.tokens_per_s) for r in report.fixed_shape if r.system == system)
        ax.plot(*zip(*rows), marker="o", label=system)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(batch_sizes), [str(b) for b in batch_sizes])
    ax.set_yscale("log")
    shape = report.fixed_shape[0]
    ax.set_xlabel(f"batch size B ({shape.prompt_len}-token prompts, {shape.output_len} generated each)")
    ax.set_ylabel("generated tokens / s (prefill included)")
    ax.set_title(f"{report.model}, {report.num_threads} threads, {report.date[:10]}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
