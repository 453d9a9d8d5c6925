"""Serving metrics from per-request results, with `vllm bench serve`'s definitions.

TPOT = (E2E - TTFT) / (output tokens - 1) per request; ITL pools every gap between
successive text chunks of all requests; goodput counts requests per second that met
every given SLO (milliseconds, keys ttft / tpot / e2el).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pagoda.bench.openai_request import RequestResult

SLO_KEYS = ("ttft", "tpot", "e2el")


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds."""

    mean: float
    median: float
    p99: float
    std: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencyStats:
        if not seconds:
            return cls(0.0, 0.0, 0.0, 0.0)
        ms = np.asarray(seconds, dtype=np.float64) * 1000.0
        return cls(float(ms.mean()), float(np.median(ms)), float(np.percentile(ms, 99)), float(ms.std()))


@dataclass(frozen=True)
class BenchmarkMetrics:
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # requests / s
    output_throughput: float  # generated tokens / s
    total_token_throughput: float  # (prompt + generated) tokens / s
    goodput: float | None  # requests / s meeting every SLO; None without SLOs
    ttft_ms: LatencyStats
    tpot_ms: LatencyStats
    itl_ms: LatencyStats
    e2el_ms: LatencyStats

    def to_dict(self) -> dict:
        return asdict(self)


def parse_slos(specs: list[str] | None) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` -> ``{"ttft": 500.0, "tpot": 50.0}`` (milliseconds)."""
    slos: dict[str, float] = {}
    for spec in specs or []:
        key, _, value = spec.partition(":")
        if key not in SLO_KEYS or not value:
            raise ValueError(f"bad SLO {spec!r}: use KEY:MILLISECONDS with KEY in {', '.join(SLO_KEYS)}")
        slos[key] = float(value)
    return slos


def _meets(r: RequestResult, slos: dict[str, float]) -> bool:
    values = {"ttft": r.ttft, "tpot": r.tpot or 0.0, "e2el": r.e2e}
    return all(values[k] * 1000.0 <= limit for k, limit in slos.items())


def compute_metrics(results: list[RequestResult], duration_s: float,
                    slos: dict[str, float] | None = None) -> BenchmarkMetrics:
    ok = [r for r in results if r.success]
    duration_s = max(duration_s, 1e-9)
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_len for r in ok)
    goodput = sum(_meets(r, slos) for r in ok) / duration_s if slos else None
    return BenchmarkMetrics(
        completed=len(ok), failed=len(results) - len(ok), duration_s=duration_s,
        total_input_tokens=total_in, total_output_tokens=total_out,
        request_throughput=len(ok) / duration_s, output_throughput=total_out / duration_s,
        total_token_throughput=(total_in + total_out) / duration_s, goodput=goodput,
        ttft_ms=LatencyStats.of([r.ttft for r in ok]),
        tpot_ms=LatencyStats.of([t for r in ok if (t := r.tpot) is not None]),
        itl_ms=LatencyStats.of([x for r in ok for x in r.itl]),
        e2el_ms=LatencyStats.of([r.e2e for r in ok]),
    )


def format_table(m: BenchmarkMetrics, title: str = "Serving Benchmark Result") -> str:
    rows: list[tuple[str, str]] = [
        ("Successful requests", f"{m.completed}"),
        ("Failed requests", f"{m.failed}"),
        ("Benchmark duration (s)", f"{m.duration_s:.2f}"),
        ("Total input tokens", f"{m.total_input_tokens}"),
        ("Total generated tokens", f"{m.total_output_tokens}"),
        ("Request throughput (req/s)", f"{m.request_throughput:.2f}"),
        ("Output token throughput (tok/s)", f"{m.output_throughput:.2f}"),
        ("Total token throughput (tok/s)", f"{m.total_token_throughput:.2f}"),
    ]
    if m.goodput is not None:
        rows.append(("Request goodput (req/s)", f"{m.goodput:.2f}"))
    for name, stats in (("TTFT", m.ttft_ms), ("TPOT", m.tpot_ms), ("ITL", m.itl_ms), ("E2E latency", m.e2el_ms)):
        rows += [(f"Mean {name} (ms)", f"{stats.mean:.2f}"), (f"Median {name} (ms)", f"{stats.median:.2f}"),
                 (f"P99 {name} (ms)", f"{stats.p99:.2f}")]
    width = 50
    lines = [f"{' ' + title + ' ':=^{width}}"]
    lines += [f"{k:<38}{v:>12}" for k, v in rows]
    lines.append("=" * width)
    return "\n".join(lines)
