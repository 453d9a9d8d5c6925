"""`pagoda bench profile`: where one engine step's time goes, by component and by operator.

Runs B requests to steady decode, then profiles a few steps with torch.profiler: prints the
share of matrix multiplies, attention, sampling, elementwise work and Python/engine overhead,
the top operators, and writes a Chrome trace (open it in chrome://tracing or Perfetto).
"""

from __future__ import annotations

import argparse
import os
import time

HELP = "profile engine steps: time per component and per operator, plus a Chrome trace"

# operator -> component, by the first matching fragment
_COMPONENTS = [
    ("matmul (linear layers, LM head)", ("linear", "addmm", "aten::mm", "int4pack", "mkldnn", "_int_mm",
                                         "quantize_rows_int8", "int8_scaled_epilogue")),
    ("attention", ("index_select", "bmm", "softmax", "scaled_dot_product", "index_copy", "masked_fill")),
    ("sampling", ("topk", "argmax", "amax", "log_softmax", "exponential", "multinomial", "sort")),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--quantization", default="auto", choices=["auto", "gguf", "w8a8", "none"])
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--out", default="bench_results")


def run(args: argparse.Namespace) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pagoda import LLM, SamplingParams

    llm = LLM(args.model, quantization=None if args.quantization == "none" else args.quantization,
              num_threads=args.num_threads, show_progress=False)
    engine = llm.engine
    vocab = engine.model_config.vocab_size
    params = SamplingParams(temperature=0, max_tokens=args.warmup_steps + args.steps + 8, ignore_eos=True)
    for i in range(args.batch_size):
        engine.add_request(f"p{i}", [(i * 7919 + j * 31) % (vocab - 1) + 1 for j in range(args.prompt_len)], params)
    for _ in range(args.warmup_steps):
        engine.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        wall = (time.perf_counter() - start) / args.steps
    events = prof.key_averages()
    totals: dict[str, float] = {}
    for e in events:
        name = e.key.lower()
        comp = next((c for c, frags in _COMPONENTS if any(f in name for f in frags)), "elementwise and other ops")
        totals[comp] = totals.get(comp, 0.0) + e.self_cpu_time_total / 1e3 / args.steps
    op_ms = sum(totals.values())
    print(f"\nB={args.batch_size}, decode steps, {torch.get_num_threads()} threads: {wall * 1e3:.1f} ms per step "
          f"(profiled; {args.batch_size / wall:.0f} tok/s)")
    print(f"{'component':<34} {'ms/step':>8} {'share':>7}")
    for comp, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{comp:<34} {ms:>8.2f} {ms / (wall * 1e3):>7.1%}")
    overhead = wall * 1e3 - op_ms
    print(f"{'python / engine overhead':<34} {overhead:>8.2f} {overhead / (wall * 1e3):>7.1%}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    os.makedirs(args.out, exist_ok=True)
    trace = os.path.join(args.out, f"profile_b{args.batch_size}.json")
    prof.export_chrome_trace(trace)
    print(f"wrote {trace}")
    return 0
