"""Fixed-shape throughput for `pagoda bench throughput`: B prompts of ``prompt_len`` random tokens,
each generating exactly ``output_len`` tokens, timed on Pagoda and on transformers' batched ``generate``;
the table and plot that put them next to the published llama.cpp / vLLM figures and issue 3's targets.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pagoda.bench.throughput_report import BenchReport

# Published figures from issue 3 (this machine, SmolLM2-135M-Instruct, 2 threads, 128 + 128 tokens):
# constants, not measured by this script.
PEERS: dict[str, dict[int, float]] = {
    "llama.cpp Q4_1 (published)": {1: 89, 8: 131, 32: 136, 64: 149},
    "vLLM 0.32 CPU bf16 (published)": {1: 41, 8: 246, 32: 444, 64: 511},
}
TARGETS: dict[int, float] = {1: 89, 8: 246, 32: 444, 64: 511}  # issue 3's "target": beat these
TRANSFORMERS = "transformers fp32"


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FixedShapeResult:
    system: str
    batch_size: int
    prompt_len: int
    output_len: int
    generated_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds


# -- workloads ------------------------------------------------------------------------------------
def random_prompts(batch_size: int, prompt_len: int, vocab_size: int, seed: str) -> list[list[int]]:
    """Seeds name the measurement ("0-B8"): prompts differ between measurements, so the prefix cache
    (on by default) never turns one measurement's prompts into another's cache hits."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(prompt_len)] for _ in range(batch_size)]


# -- fixed shapes ---------------------------------------------------------------------------------
def warm_up(llm, seed: int = 0) -> None:
    """One short batch first, so that lazy initialisation (and compilation) is not timed."""
    from pagoda import SamplingParams

    prompts = random_prompts(2, 16, llm.engine.model_config.vocab_size, f"{seed}-warm-up")
    llm.generate(prompts, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True), use_tqdm=False)


def measure_pagoda(llm, system: str, batch_sizes: Sequence[int], prompt_len: int, output_len: int,
                   seed: int = 0, progress: bool = True) -> list[FixedShapeResult]:
    """Times ``llm.generate`` on each batch size (one warm-up first), greedy with ``ignore_eos``."""
    from tqdm import tqdm

    from pagoda import SamplingParams

    warm_up(llm, seed)
    vocab = llm.engine.model_config.vocab_size
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    results = []
    for b in (bar := tqdm(batch_sizes, desc=system, unit=" batch", disable=not progress)):
        prompts = random_prompts(b, prompt_len, vocab, f"{seed}-B{b}")
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        generated = sum(len(o.outputs[0].token_ids) for o in outs)
        results.append(FixedShapeResult(system, b, prompt_len, output_len, generated, seconds))
        bar.set_postfix_str(f"B={b}: {results[-1].tokens_per_s:.1f} tok/s")
    return results


def measure_transformers(model: str, batch_sizes: Sequence[int], prompt_len: int, output_len: int,
                         vocab_size: int, seed: int = 0, progress: bool = True) -> list[FixedShapeResult]:
    """transformers' batched greedy ``generate`` in fp32 on the same prompts (a GGUF dequantized on load)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    if model.endswith(".gguf"):
        hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(model) or ".",
                                                  gguf_file=os.path.basename(model), dtype=torch.float32)
    else:
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    hf.eval()
    # min = max new tokens: exactly output_len each, like ignore_eos
    pad = hf.generation_config.eos_token_id
    pad = pad[0] if isinstance(pad, list) else (pad if pad is not None else 0)

    def generate(prompts: list[list[int]], n: int) -> torch.Tensor:
        ids = torch.tensor(prompts)  # equal lengths: left padding is a no-op, the mask is all ones
        with torch.inference_mode():
            return hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                               min_new_tokens=n, pad_token_id=pad)

    generate(random_prompts(2, 16, vocab_size, f"{seed}-warm-up"), 4)
    results = []
    for b in (bar := tqdm(batch_sizes, desc=TRANSFORMERS, unit=" batch", disable=not progress)):
        prompts = random_prompts(b, prompt_len, vocab_size, f"{seed}-B{b}")
        start = time.perf_counter()
        out = generate(prompts, output_len)
        seconds = time.perf_counter() - start
        results.append(FixedShapeResult(TRANSFORMERS, b, prompt_len, output_len,
                                        int(out[:, prompt_len:].numel()), seconds))
        bar.set_postfix_str(f"B={b}: {results[-1].tokens_per_s:.1f} tok/s")
    return results


# -- printing ------------------------------------------------------------------------------------------
def format_fixed_table(report: BenchReport, batch_sizes: Sequence[int]) -> str:
    systems = list(dict.fromkeys(r.system for r in report.fixed_shape)) + list(report.unavailable)
    by = {(r.system, r.batch_size): r.tokens_per_s for r in report.fixed_shape}
    header = ["B", *systems, *PEERS, "target"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for b in batch_sizes:
        cells = [str(b)] + [f"{by[s, b]:.1f}" if (s, b) in by else "n/a" for s in systems]
        cells += [f"{peer[b]:g}" if b in peer else "-" for peer in PEERS.values()]
        cells.append(f"> {TARGETS[b]:g}" if b in TARGETS else "-")
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
    for name, peer in PEERS.items():
        rows = sorted((b, v) for b, v in peer.items() if b in batch_sizes)
        if rows:
            ax.plot(*zip(*rows), marker="x", linestyle="--", label=name)
    targets = sorted((b, v) for b, v in TARGETS.items() if b in batch_sizes)
    if targets:
        ax.plot(*zip(*targets), color="k", linestyle=":", marker="_", markersize=14, label="target (issue 3)")
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
