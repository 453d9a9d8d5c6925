"""One PNG summarising a serving benchmark: latencies over time, their distributions, and the table."""

from __future__ import annotations

from pagoda.bench.metrics import BenchmarkMetrics
from pagoda.bench.openai_request import RequestResult


def plot_results(results: list[RequestResult], metrics: BenchmarkMetrics, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt
    import numpy as np

    ok = [r for r in results if r.success]
    t0 = min((r.start for r in results), default=0.0)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0, 0]
    ax.scatter([r.start - t0 for r in ok], [r.ttft * 1000 for r in ok], s=8, label="TTFT")
    ax.scatter([r.start - t0 for r in ok], [r.e2e * 1000 for r in ok], s=8, label="E2E", alpha=0.6)
    ax.set_xlabel("request sent at (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("latency by arrival time")
    ax.legend()

    ax = axes[0, 1]
    for name, values in (("TTFT", [r.ttft for r in ok]), ("E2E", [r.e2e for r in ok]),
                         ("TPOT", [t for r in ok if (t := r.tpot) is not None])):
        if values:
            v = np.sort(np.asarray(values) * 1000)
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=name)
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of requests")
    ax.set_title("latency CDF")
    ax.legend()

    ax = axes[1, 0]
    itl = np.asarray([x for r in ok for x in r.itl]) * 1000
    if itl.size:
        ax.hist(itl, bins=50)
        ax.axvline(metrics.itl_ms.p99, color="r", linestyle="--", label=f"p99 {metrics.itl_ms.p99:.1f} ms")
        ax.legend()
    ax.set_xlabel("inter-token latency (ms)")
    ax.set_ylabel("count")
    ax.set_title("ITL distribution")

    ax = axes[1, 1]
    ax.axis("off")
    lines = [
        f"requests: {metrics.completed} ok, {metrics.failed} failed in {metrics.duration_s:.1f} s",
        f"request throughput: {metrics.request_throughput:.2f} req/s",
        f"output throughput: {metrics.output_throughput:.1f} tok/s",
        f"total throughput: {metrics.total_token_throughput:.1f} tok/s",
    ]
    if metrics.goodput is not None:
        lines.append(f"goodput: {metrics.goodput:.2f} req/s")
    for name, s in (("TTFT", metrics.ttft_ms), ("TPOT", metrics.tpot_ms), ("ITL", metrics.itl_ms),
                    ("E2E", metrics.e2el_ms)):
        lines.append(f"{name}: mean {s.mean:.1f} / median {s.median:.1f} / p99 {s.p99:.1f} ms")
    ax.text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=10)
    fig.suptitle(title or "pagoda bench serve")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
