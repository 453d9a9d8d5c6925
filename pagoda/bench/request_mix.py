"""The ShareGPT-like mix of `pagoda bench throughput`: seeded log-normal request lengths fed to the
engine on a Poisson schedule and stepped to completion, sampling KV occupancy after each step; each
request's arrival, first-token and finish times, the run's summary and table, and the latency CDFs.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pagoda.bench.fixed_shape import warm_up
from pagoda.bench.kv_usage import KVUsage


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MixRequest:
    prompt_token_ids: list[int]
    output_len: int


@dataclass(frozen=True)
class RequestTiming:
    """Seconds from the start of the run (arrival is the Poisson schedule, not when the loop saw it)."""

    prompt_len: int
    output_len: int  # tokens actually generated
    arrival: float
    first_token: float
    finished: float

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def e2e(self) -> float:
        return self.finished - self.arrival



@dataclass
class MixResult:
    batching: str
    request_rate: float
    duration: float
    requests: list[RequestTiming]
    kv: KVUsage

    def summary(self) -> dict[str, float]:
        from pagoda.bench.metrics import LatencyStats

        out_tokens = sum(r.output_len for r in self.requests)
        in_tokens = sum(r.prompt_len for r in self.requests)
        e2e = LatencyStats.of([r.e2e for r in self.requests])
        ttft = LatencyStats.of([r.ttft for r in self.requests])
        return {"completed": len(self.requests), "duration_s": self.duration,
                "request_throughput": len(self.requests) / self.duration,
                "output_throughput": out_tokens / self.duration,
                "total_token_throughput": (in_tokens + out_tokens) / self.duration,
                "mean_e2e_s": e2e.mean / 1000, "p99_e2e_s": e2e.p99 / 1000,
                "mean_ttft_s": ttft.mean / 1000, "p99_ttft_s": ttft.p99 / 1000,
                "num_preemptions": self.kv.num_preemptions}


# -- workloads ------------------------------------------------------------------------------------
def sharegpt_like_mix(num_requests: int, vocab_size: int, input_range: tuple[int, int],
                      output_range: tuple[int, int], seed: int, run: str = "") -> list[MixRequest]:
    """ShareGPT's shape without the data: log-normal lengths (medians ~100 input / ~150 output tokens,
    long right tails, as in `bench serve`'s sharegpt workload) clipped to the ranges. The lengths
    depend on ``seed`` only; the random token ids on ``run`` too (no prefix-cache hits across runs)."""
    rng = random.Random(seed)
    tokens = random.Random(f"{seed}-{run}")

    def draw(median: float, sigma: float, lo: int, hi: int) -> int:
        median = min(max(median, lo), hi)
        return int(min(hi, max(lo, rng.lognormvariate(math.log(median), sigma))))

    out = []
    for _ in range(num_requests):
        n_in = draw(100, 1.0, *input_range)
        n_out = draw(150, 0.8, *output_range)
        out.append(MixRequest([tokens.randrange(vocab_size) for _ in range(n_in)], n_out))
    return out


# -- the mix under Poisson arrivals -----------------------------------------------------------------
def run_mix(llm, requests: Sequence[MixRequest], request_rate: float, seed: int = 0,
            progress: bool = True) -> MixResult:
    """Feeds ``llm.engine`` on a seeded Poisson schedule (rate in requests/s, ``inf``: all at once)
    and steps it until every request has finished, sampling KV occupancy after each step."""
    from tqdm import tqdm

    from pagoda import SamplingParams
    from pagoda.bench.load_generator import arrival_times
    from pagoda.engine.model_runner import kv_cache_bytes_per_block
    from pagoda.outputs import RequestOutput

    warm_up(llm, seed)
    engine = llm.engine
    cache = engine.cache_config
    per_block = kv_cache_bytes_per_block(engine.model_config, cache.block_size)
    kv = KVUsage(bytes_per_token=per_block // cache.block_size, block_size=cache.block_size,
                 num_blocks=cache.num_blocks, max_model_len=engine.model_config.max_model_len)
    before = engine.get_stats()
    offsets = arrival_times(len(requests), request_rate, seed)
    ids = [f"mix-{i}" for i in range(len(requests))]
    done: dict[str, RequestOutput] = {}
    bar = tqdm(total=len(requests), desc=f"mix ({engine.scheduler_config.batching})", unit=" req",
               disable=not progress)
    start = time.monotonic()
    i = 0
    while len(done) < len(requests):
        now = time.monotonic()
        while i < len(requests) and start + offsets[i] <= now:
            params = SamplingParams(temperature=0, max_tokens=requests[i].output_len, ignore_eos=True)
            engine.add_request(ids[i], requests[i].prompt_token_ids, params, arrival_time=start + offsets[i])
            i += 1
        if not engine.has_unfinished_requests():
            if i == len(requests):
                raise RuntimeError("the engine dropped requests without finishing them")
            time.sleep(max(0.0, start + offsets[i] - time.monotonic()))  # idle until the next arrival
            continue
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
                bar.update(1)
        _sample_kv(engine, kv)
        bar.set_postfix_str(f"arrived {i}, running {len(engine.scheduler.running)}", refresh=False)
    bar.close()
    after = engine.get_stats()
    kv.num_preemptions = after.num_preemptions_total - before.num_preemptions_total
    kv.prefix_cache_hit_tokens = after.prefix_cache_hits_total - before.prefix_cache_hits_total
    failed = {rid: out.extra["error"] for rid, out in done.items() if out.extra.get("error")}
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, e.g. {next(iter(failed.values()))}")
    timings = []
    for rid, req in zip(ids, requests):
        m = done[rid].metrics
        assert m is not None and m.first_token_time is not None and m.finished_time is not None  # finished
        timings.append(RequestTiming(len(req.prompt_token_ids), len(done[rid].outputs[0].token_ids),
                                     m.arrival_time - start, m.first_token_time - start,
                                     m.finished_time - start))
    duration = max(t.finished for t in timings)
    return MixResult(engine.scheduler_config.batching, request_rate, duration, timings, kv)


def _sample_kv(engine, kv: KVUsage) -> None:
    # engine internals on purpose: tokens and blocks per running request are not engine metrics
    running = engine.scheduler.running
    blocks = {b for r in running for b in engine.kv_cache.get_block_table(r.request_id)}
    kv.peak_usage = max(kv.peak_usage, len(blocks) / kv.num_blocks)
    kv.peak_pool_usage = max(kv.peak_pool_usage, engine.get_stats().kv_cache_usage)
    kv.peak_running = max(kv.peak_running, len(running))
    kv.real_token_steps += sum(r.num_computed_tokens for r in running)
    kv.paged_slot_steps += len(blocks) * kv.block_size
    kv.contiguous_slot_steps += len(running) * kv.max_model_len
    kv.reserved_slot_steps += sum(r.num_prompt_tokens + r.max_tokens for r in running)


# -- printing ------------------------------------------------------------------------------------------
def format_mix_table(results: Sequence[MixResult]) -> str:
    header = ["batching", "rate req/s", "duration s", "req/s", "output tok/s", "total tok/s", "mean E2E s",
              "p99 E2E s", "mean TTFT s", "p99 TTFT s", "preemptions"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for m in results:
        s = m.summary()
        lines.append("| " + " | ".join([
            m.batching if math.isfinite(m.request_rate) else f"{m.batching}, all at t = 0",
            f"{m.request_rate:.3f}", f"{s['duration_s']:.1f}", f"{s['request_throughput']:.2f}",
            f"{s['output_throughput']:.1f}", f"{s['total_token_throughput']:.1f}", f"{s['mean_e2e_s']:.2f}",
            f"{s['p99_e2e_s']:.2f}", f"{s['mean_ttft_s']:.2f}", f"{s['p99_ttft_s']:.2f}",
            str(s["num_preemptions"])]) + " |")
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------------------
def plot_latency_cdfs(results: Sequence[MixResult], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, name, key in ((axes[0], "end-to-end latency", "e2e"), (axes[1], "time to first token", "ttft")):
        for m in results:
            v = np.sort([getattr(r, key) for r in m.requests])
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=f"{m.batching} ({m.request_rate:.2f} req/s)")
        ax.set_xscale("log")
        ax.set_xlabel("seconds")
        ax.set_ylabel("fraction of requests")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
