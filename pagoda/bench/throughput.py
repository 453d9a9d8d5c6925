"""`pagoda bench throughput`: offline throughput of the engine, in one run on one machine.

Three parts (issue 3):

1. Fixed shapes: B prompts of ``prompt_len`` random tokens, each generating exactly ``output_len``
   tokens; generated tokens per wall-clock second, prefill included. Pagoda with each
   ``quantization`` setting next to transformers' batched ``generate`` (fp32), both measured in
   this run (peers' figures from other days or machines are no comparison and are not printed).
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
import math
import os
import platform
import time

# TRANSFORMERS is re-exported: the tests name the baseline as throughput.TRANSFORMERS
from pagoda.bench.fixed_shape import TRANSFORMERS as TRANSFORMERS
from pagoda.bench.fixed_shape import measure_pagoda, measure_transformers
from pagoda.bench.kv_usage import format_kv
from pagoda.bench.request_mix import MixResult, format_mix_table, run_mix, sharegpt_like_mix
from pagoda.bench.throughput_report import BenchReport, format_fixed_table, write_outputs

HELP = ("offline throughput: fixed batches vs transformers, a ShareGPT-like mix "
        "(continuous vs static), KV memory")

SETTINGS = [f"{q}{kv}" for q in ("gguf", "w8a8", "none") for kv in ("", "+kv-int8", "+kv-fp8")]
QUICK = dict(batch_sizes=[1, 8], num_requests=32, max_input_len=256, max_output_len=128)


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
    f.add_argument("--quantizations", nargs="*", default=["gguf", "none"], choices=SETTINGS,
                   help="Pagoda settings to measure ('none' dequantizes; '+kv-int8' / '+kv-fp8': quantized KV cache)")
    f.add_argument("--rounds", type=int, default=1,
                   help="interleaved rounds: every setting is loaded first, then each round measures them in turn "
                        "(fresh prompts per round); the table shows each cell's median round, the ranges follow")
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

    quantization, _, kv = (quantization or "none").partition("+kv-")
    return LLM(model=args.model, dtype=args.dtype, quantization=None if quantization == "none" else quantization,
               kv_cache_dtype=kv or "auto", batching=batching,
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
    if args.rounds > 1 and batch_sizes:
        vocab_size = _interleaved_rounds(args, report, batch_sizes, progress)
    for q in args.quantizations if args.rounds <= 1 else []:
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


def _interleaved_rounds(args: argparse.Namespace, report: BenchReport, batch_sizes: list[int], progress: bool) -> int:
    """Fixed shapes with every setting loaded at once and measured in turn, ``args.rounds`` times; keeps each
    (setting, B)'s median round in the report and prints every cell's range. Returns the vocabulary size."""
    import statistics

    llms = {}
    for q in dict.fromkeys(args.quantizations):
        system = f"pagoda {q}"
        try:
            llms[system] = _make_llm(args, None if q == "none" else q, max_num_seqs=max([args.max_num_seqs, *batch_sizes]))
        except Exception as exc:  # noqa: BLE001  (a setting the engine lacks is reported, not fatal)
            report.unavailable[system] = f"{type(exc).__name__}: {exc}"
            print(f"{system}: n/a ({report.unavailable[system]})")
    runs: dict[tuple[str, int], list] = {}
    for r in range(args.rounds):
        for system, llm in llms.items():  # the same fresh prompts for every setting within a round
            for res in measure_pagoda(llm, system, batch_sizes, args.prompt_len, args.output_len,
                                      args.seed + 1000 * r, progress):
                runs.setdefault((system, res.batch_size), []).append(res)
    for (system, b), results in runs.items():
        ordered = sorted(results, key=lambda x: x.tokens_per_s)
        report.fixed_shape.append(ordered[(len(ordered) - 1) // 2])
        print(f"{system} B={b}: median {statistics.median(x.tokens_per_s for x in results):.1f} tok/s, range "
              f"{ordered[0].tokens_per_s:.1f}-{ordered[-1].tokens_per_s:.1f} over {len(results)} rounds")
    vocab = next(iter(llms.values())).engine.model_config.vocab_size if llms else 0
    llms.clear()
    _release()
    return vocab


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



def run(args: argparse.Namespace) -> int:
    report = benchmark(args)
    load = report.load_average
    print(f"\n{report.date} · {report.machine} · {report.model} · {report.wall_s / 60:.1f} min · "
          f"1-min load average {load['start']:.1f} at the start, {load['end']:.1f} at the end")
    for path in write_outputs(report, sorted(args.batch_sizes), args.out):
        print(f"wrote {path}")
    return 0
