"""`pagoda bench throughput`: offline throughput of the engine, in one run on one machine.

Three parts (issue 3):

1. Fixed shapes: B prompts of ``prompt_len`` random tokens, each generating exactly ``output_len``
   tokens; generated tokens per wall-clock second, prefill included. Pagoda with each
   ``quantization`` setting next to transformers' batched ``generate`` (fp32) measured here, and
   llama.cpp / vLLM as *published constants* (issue 3, same machine, model and metric).
2. A ShareGPT-like mix (log-normal lengths clipped to the ranges, fixed seed) under Poisson
   arrivals near saturation, continuous vs static batching: throughput, E2E latency and TTFT.
3. KV memory of the continuous run: bytes per token, pool size, peak usage, and utilisation
   (slots holding real tokens / slots allocated) of the paged cache next to contiguous
   pre-allocation.

Example::

    pagoda bench throughput                         # everything, default model (10-20 min on 2 cores)
    pagoda bench throughput --quick                 # a few minutes
    pagoda bench throughput --batch-sizes 1 8 --num-requests 32 --skip-transformers
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

HELP = ("offline throughput: fixed batches vs transformers and peers, a ShareGPT-like mix "
        "(continuous vs static), KV memory")

# Published figures from issue 3 (this machine, SmolLM2-135M-Instruct, 2 threads, 128 + 128 tokens):
# constants, not measured by this script.
PEERS: dict[str, dict[int, float]] = {
    "llama.cpp Q4_1 (published)": {1: 89, 8: 131, 32: 136, 64: 149},
    "vLLM 0.32 CPU bf16 (published)": {1: 41, 8: 246, 32: 444, 64: 511},
}
TARGETS: dict[int, float] = {1: 89, 8: 246, 32: 444, 64: 511}  # issue 3's "target": beat these
TRANSFORMERS = "transformers fp32"
QUICK = dict(batch_sizes=[1, 8], num_requests=32, max_input_len=256, max_output_len=128)


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
class KVUsage:
    """Sums over engine steps: utilisation = sum(real tokens) / sum(slots) over the run."""

    bytes_per_token: int
    block_size: int
    num_blocks: int
    max_model_len: int
    peak_usage: float = 0.0  # fraction of the pool's blocks held by running requests
    peak_pool_usage: float = 0.0  # the engine's gauge: prefix-cached blocks kept for reuse included
    peak_running: int = 0
    real_token_steps: int = 0  # tokens whose K/V is in the cache
    paged_slot_steps: int = 0  # slots of the blocks allocated
    contiguous_slot_steps: int = 0  # max_model_len per running sequence
    reserved_slot_steps: int = 0  # prompt + max_tokens per running sequence
    num_preemptions: int = 0
    prefix_cache_hit_tokens: int = 0  # 0 expected: the mix's prompts share nothing

    def utilisation(self, slot_steps: int) -> float:
        return self.real_token_steps / slot_steps if slot_steps else 0.0


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


# -- workloads ------------------------------------------------------------------------------------
def random_prompts(batch_size: int, prompt_len: int, vocab_size: int, seed: str) -> list[list[int]]:
    """Seeds name the measurement ("0-B8"): prompts differ between measurements, so the prefix cache
    (on by default) never turns one measurement's prompts into another's cache hits."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(prompt_len)] for _ in range(batch_size)]


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


def format_kv(kv: KVUsage) -> str:
    gib = 2**30
    pool_tokens = kv.num_blocks * kv.block_size
    pool_gib = pool_tokens * kv.bytes_per_token / gib
    rows = [
        (f"paged, blocks of {kv.block_size} tokens", kv.utilisation(kv.paged_slot_steps)),
        (f"contiguous, max_model_len ({kv.max_model_len}) per sequence",
         kv.utilisation(kv.contiguous_slot_steps)),
        ("contiguous, prompt + max_tokens per sequence", kv.utilisation(kv.reserved_slot_steps)),
    ]
    lines = [f"KV cache: {kv.bytes_per_token:,} bytes per token; pool {kv.num_blocks} blocks x "
             f"{kv.block_size} = {pool_tokens:,} tokens ({pool_gib:.2f} GiB); "
             f"peak {kv.peak_usage:.1%} of the pool held by running requests ({kv.peak_running} at most; "
             f"{kv.peak_pool_usage:.1%} with prefix-cached blocks); {kv.num_preemptions} preemptions, "
             f"{kv.prefix_cache_hit_tokens} prefix-cache hit tokens",
             f"contiguous max-length pre-allocation for {kv.peak_running} sequences would take "
             f"{kv.peak_running * kv.max_model_len * kv.bytes_per_token / gib:.2f} GiB",
             "| allocation | utilisation (real-token slots / allocated slots, over all steps) |",
             "| --- | --- |"]
    lines += [f"| {name} | {u:.1%} |" for name, u in rows]
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


# -- the command ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    e = parser.add_argument_group("engine")
    e.add_argument("--model", default=None,
                   help="HF directory or .gguf (default: the bundled SmolLM2-135M-Instruct)")
    e.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    e.add_argument("--num-threads", type=int, default=2)
    e.add_argument("--max-num-seqs", type=int, default=64, help="the mix's concurrency limit")
    e.add_argument("--max-num-batched-tokens", type=int, default=2048)
    f = parser.add_argument_group("fixed shapes")
    f.add_argument("--batch-sizes", type=int, nargs="*", default=None,
                   help="default 1 8 32 64 (--quick: 1 8); none skips the fixed shapes")
    f.add_argument("--prompt-len", type=int, default=128)
    f.add_argument("--output-len", type=int, default=128)
    f.add_argument("--quantizations", nargs="*", default=["gguf", "none"], choices=["gguf", "none"],
                   help="Pagoda settings to measure ('none' dequantizes)")
    f.add_argument("--skip-transformers", action="store_true", help="no transformers baseline")
    m = parser.add_argument_group("ShareGPT-like mix (quantization auto)")
    m.add_argument("--num-requests", type=int, default=None,
                   help="default 256 (--quick: 32); 0 skips the mix")
    m.add_argument("--min-input-len", type=int, default=16)
    m.add_argument("--max-input-len", type=int, default=None, help="default 1024 (--quick: 256)")
    m.add_argument("--min-output-len", type=int, default=16)
    m.add_argument("--max-output-len", type=int, default=None, help="default 512 (--quick: 128)")
    m.add_argument("--request-rate", type=float, default=None,
                   help="Poisson arrivals per second (default: the saturated rate, measured first by a run "
                        "with every request queued at t = 0)")
    parser.add_argument("--quick", action="store_true", help="shrink every part to fit in a few minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_results", help="directory for throughput.json and the PNGs")
    parser.add_argument("--no-progress", action="store_true")


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    defaults = QUICK if args.quick else dict(batch_sizes=[1, 8, 32, 64], num_requests=256, max_input_len=1024,
                                            max_output_len=512)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} CPUs visible, torch {torch.__version__}"


def _make_llm(args: argparse.Namespace, quantization: str | None, batching: str = "continuous",
              max_num_seqs: int | None = None):
    from pagoda import LLM

    return LLM(model=args.model, dtype=args.dtype, quantization=quantization, batching=batching,
               max_num_seqs=max_num_seqs or args.max_num_seqs,
               max_num_batched_tokens=args.max_num_batched_tokens, num_threads=args.num_threads,
               seed=args.seed, show_progress=False)


def _release() -> None:
    gc.collect()  # frees the previous engine's KV pool before the next one allocates


def benchmark(args: argparse.Namespace) -> BenchReport:
    """Runs every part the arguments ask for and returns the report (printing as it goes)."""
    from pagoda.weights.default_model import default_model_path

    args = _resolve(args)
    started = time.perf_counter()
    progress = not args.no_progress
    model = args.model or default_model_path()
    report = BenchReport(datetime.datetime.now().isoformat(timespec="seconds"), _machine(),
                         os.path.basename(os.path.normpath(model)), args.num_threads,
                         load_average={"start": os.getloadavg()[0]})
    if report.load_average["start"] > (os.cpu_count() or 1) - args.num_threads + 0.5:
        print(f"warning: the 1-minute load average is {report.load_average['start']:.1f} on "
              f"{os.cpu_count()} CPUs; other processes will slow every figure down")
    batch_sizes = sorted(args.batch_sizes)
    vocab_size = 0
    for q in args.quantizations:
        system = f"pagoda {q}"
        try:
            llm = _make_llm(args, None if q == "none" else q,
                            max_num_seqs=max([args.max_num_seqs, *batch_sizes]))
        except Exception as exc:  # noqa: BLE001  (a setting the engine lacks is reported, not fatal)
            report.unavailable[system] = f"{type(exc).__name__}: {exc}"
            print(f"{system}: n/a ({report.unavailable[system]})")
            continue
        vocab_size = llm.engine.model_config.vocab_size
        if batch_sizes:
            report.fixed_shape += measure_pagoda(llm, system, batch_sizes, args.prompt_len, args.output_len,
                                                 args.seed, progress)
        del llm
        _release()
    if batch_sizes and not args.skip_transformers:
        if not vocab_size:
            from pagoda.weights.model_loader import ModelFiles

            vocab_size = int(ModelFiles(model).hf_config()["vocab_size"])
        report.fixed_shape += measure_transformers(model, batch_sizes, args.prompt_len, args.output_len,
                                                   vocab_size, args.seed, progress)
        _release()
    if batch_sizes:
        print(f"\nFixed shapes: generated tokens/s, {args.prompt_len}-token prompts generating "
              f"{args.output_len} tokens each, prefill included ({report.num_threads} threads)")
        print(format_fixed_table(report, batch_sizes))

    if args.num_requests > 0:
        report.mix = benchmark_mix(args, progress)
    report.load_average["end"] = os.getloadavg()[0]
    report.wall_s = time.perf_counter() - started
    return report


def _make_mix_llm(args: argparse.Namespace, batching: str):
    try:
        return _make_llm(args, "auto", batching)
    except Exception as exc:  # noqa: BLE001  (fall back to what exists)
        print(f"quantization auto: n/a ({type(exc).__name__}: {exc}); the mix runs dequantized")
        return _make_llm(args, None, batching)


def benchmark_mix(args: argparse.Namespace, progress: bool) -> list[MixResult]:
    """The mix with continuous, then static batching, at one Poisson rate. Without ``--request-rate``
    the rate is the request throughput continuous batching reaches with every request queued at
    t = 0 (its capacity on this mix, drain included): that run comes first and is reported too."""
    results: list[MixResult] = []
    rate = args.request_rate
    for batching in ("continuous", "static"):
        llm = _make_mix_llm(args, batching)
        config = llm.engine.model_config
        shape = (args.num_requests, config.vocab_size,
                 (args.min_input_len, min(args.max_input_len, config.max_model_len - args.min_output_len)),
                 (args.min_output_len, args.max_output_len), args.seed)
        if rate is None:
            saturation = sharegpt_like_mix(*shape, "saturation")
            results.append(run_mix(llm, saturation, math.inf, args.seed, progress))
            rate = results[-1].summary()["request_throughput"]
        requests = sharegpt_like_mix(*shape, batching)
        if batching == "continuous":
            print(f"\nShareGPT-like mix: {len(requests)} requests, input {args.min_input_len}-"
                  f"{args.max_input_len}, output {args.min_output_len}-{args.max_output_len} tokens, seed "
                  f"{args.seed}; Poisson arrivals at {rate:.3f} req/s "
                  f"({'given' if args.request_rate else 'the saturated request throughput'})")
        results.append(run_mix(llm, requests, rate, args.seed, progress))
        del llm
        _release()
    print(format_mix_table(results))
    cont, static = results[-2:]
    ratio = static.summary()["mean_e2e_s"] / max(cont.summary()["mean_e2e_s"], 1e-9)
    print(f"continuous batching's mean E2E latency is {ratio:.2f}x lower than static's (target >= 2x)\n")
    busiest = max((m for m in results if m.batching == "continuous"), key=lambda m: m.kv.peak_usage)
    print(f"KV memory in the continuous run at rate {busiest.request_rate:.3f} req/s")
    print(format_kv(busiest.kv))
    return results


def write_outputs(report: BenchReport, batch_sizes: Sequence[int], out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    record = {
        "date": report.date, "machine": report.machine, "model": report.model,
        "num_threads": report.num_threads, "load_average": report.load_average, "wall_s": report.wall_s,
        "fixed_shape": [dict(asdict(r), tokens_per_s=r.tokens_per_s) for r in report.fixed_shape],
        "unavailable": report.unavailable, "published_peers": PEERS, "targets": TARGETS,
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


def run(args: argparse.Namespace) -> int:
    report = benchmark(args)
    load = report.load_average
    print(f"\n{report.date} · {report.machine} · {report.model} · {report.wall_s / 60:.1f} min · "
          f"1-min load average {load['start']:.1f} at the start, {load['end']:.1f} at the end")
    for path in write_outputs(report, sorted(args.batch_sizes), args.out):
        print(f"wrote {path}")
    return 0
