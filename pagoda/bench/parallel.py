"""`pagoda bench parallel`: one process against tensor / pipeline layouts, in one run.

For each layout: B prompts of random token ids, greedy, a fixed number of generated tokens;
prints throughput, the communication share of the ranks' work, the bubble rate (the share of
rank-seconds of the steps a rank sat idle) over the whole run and over its decode phase (once
every prompt has been prefilled), the utilisation balance, and whether the tokens
equal the first layout's. Writes a timeline PNG of each parallel layout's last steps: one row
per rank, one box per micro-batch (the brief's pipeline diagram) and a JSON of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from dataclasses import asdict, dataclass

from pagoda.distributed.pipeline_stage import rebalanced_stage_sizes
from pagoda.engine.args import DISTRIBUTED_BACKENDS, DTYPES, EngineArgs, int_list

HELP = "parallel layouts: throughput, communication share, bubble rate, timeline PNG"


@dataclass(frozen=True)
class LayoutResult:
    layout: str
    ranks: int
    threads_per_rank: int
    wall_s: float
    generated_tok_s: float
    total_tok_s: float
    comm_share: float | None
    bubble_rate: float | None
    decode_bubble_rate: float | None  # after every prompt's prefill
    balance: float | None
    utilisation: list[float] | None
    stage_layers: list[int] | None  # with PP: layers per stage in this run
    suggested_stage_layers: list[int] | None  # with PP: the split the decode phase's work suggests
    # (the driver's engine work between steps counted on stage 0)
    same_tokens: bool


def parse_layout(text: str) -> tuple[int, int]:
    """"1" -> (1, 1); "tp3" -> (3, 1); "pp2" -> (1, 2); "tp2pp2" -> (2, 2)."""
    text = text.strip().lower()
    if text in ("1", "single"):
        return 1, 1
    m = re.fullmatch(r"(?:tp(\d+))?(?:pp(\d+))?", text)
    if not text or m is None:
        raise ValueError(f"layout {text!r}: use 1, tpN, ppN or tpNppM")
    return int(m.group(1) or 1), int(m.group(2) or 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct (9 / 3 heads)")
    parser.add_argument("--layouts", default="1,tp3,pp2", help="comma-separated: 1, tpN, ppN, tpNppM")
    parser.add_argument("--head-twin", default=None, metavar="Q/KV",
                        help="run a random-weight twin of the model with Q query / KV key-value heads instead "
                             "(e.g. 12/4: the default model's shape with head counts that TP = 2 divides)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128,
                        help="generated tokens per request (decode-dominated, as in bench throughput)")
    # engine options keep the engine's flag names and defaults
    parser.add_argument("--dtype", default=EngineArgs.dtype, choices=DTYPES)
    parser.add_argument("--pipeline-micro-batches", type=int, default=EngineArgs.pipeline_micro_batches,
                        help="per step with PP")
    parser.add_argument("--pipeline-virtual-engines", type=int, default=EngineArgs.pipeline_virtual_engines,
                        help="steps in flight with PP (default: one per stage)")
    parser.add_argument("--pipeline-stage-layers", type=int_list, default=EngineArgs.pipeline_stage_layers,
                        metavar="N,N,...",
                        help="layers per PP stage (default: balanced by cost, the LM head on stage 0)")
    parser.add_argument("--threads", type=int, default=None, help="threads in all (default: the cores)")
    parser.add_argument("--distributed-backend", default=EngineArgs.distributed_backend,
                        choices=DISTRIBUTED_BACKENDS)
    parser.add_argument("--seed", type=int, default=EngineArgs.seed)
    parser.add_argument("--out", default="bench_results", help="directory for JSON and PNG")


def _run_layout(args: argparse.Namespace, spec: str, prompts: list[list[int]], reference: list | None):
    from pagoda import LLM, SamplingParams

    tp, pp = parse_layout(spec)
    ranks = tp * pp
    threads = max(1, (args.threads or os.cpu_count() or 1) // ranks)
    llm = LLM(args.model, dtype=args.dtype, tensor_parallel_size=tp, pipeline_parallel_size=pp,
              num_threads=threads, max_num_seqs=args.batch_size,
              max_num_batched_tokens=max(2048, args.batch_size * args.prompt_len),
              pipeline_micro_batches=args.pipeline_micro_batches,
              pipeline_virtual_engines=args.pipeline_virtual_engines,
              pipeline_stage_layers=args.pipeline_stage_layers if pp > 1 else None,
              distributed_backend=args.distributed_backend, show_progress=False)
    executor = llm.engine.runner if ranks > 1 else None
    try:
        params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
        llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)  # warm-up
        before = executor.stats() if executor else None
        t0 = time.perf_counter()
        outputs, decode_from, decode_t0 = _generate(llm.engine, prompts, params, executor)
        wall = time.perf_counter() - t0
        decode_wall = time.perf_counter() - decode_t0 if decode_t0 else 0.0
        end = executor.stats() if executor else None
        stats = end.since(before) if end else None
        decode = end.since(decode_from) if end and decode_from else None
        timeline = executor.timeline() if executor else None
        stage_layers = suggested = None
        if pp > 1:
            assert executor is not None  # more than one rank
            ranges = executor.parallel.stage_layer_ranges(llm.engine.model_config)
            stage_layers = [len(r) for r in ranges]
            phase, phase_wall = (decode, decode_wall) if decode else (stats, wall)
            assert phase is not None  # an executor has stats
            # the driver's engine work between steps (scheduling, outputs) is stage 0's too
            work = list(phase.work_s)
            work[0] += max(0.0, phase_wall - phase.step_s)
            suggested = rebalanced_stage_sizes(work, ranges, tp)
    finally:
        llm.shutdown()
    tokens = [o.outputs[0].token_ids for o in outputs]
    generated = sum(len(t) for t in tokens)
    result = LayoutResult(
        layout=spec, ranks=ranks, threads_per_rank=threads, wall_s=wall, generated_tok_s=generated / wall,
        total_tok_s=(generated + sum(len(p) for p in prompts)) / wall,
        comm_share=stats.comm_share if stats else None, bubble_rate=stats.bubble_rate if stats else None,
        decode_bubble_rate=decode.bubble_rate if decode else None,
        balance=stats.balance if stats else None, utilisation=stats.utilisation if stats else None,
        stage_layers=stage_layers, suggested_stage_layers=suggested, same_tokens=reference is None or tokens == reference)
    return result, tokens, timeline, (tp, pp)


def _generate(engine, prompts: list[list[int]], params, executor) -> tuple[list, object, float]:
    """Runs the prompts on the engine; returns their outputs in order, and the executor's stats and
    the time (perf_counter) once every request has its first token, the decode phase's start (None
    and 0 without an executor)."""
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    outputs: dict[str, object] = {}
    decode_from, decode_t0 = None, 0.0
    while engine.has_unfinished_requests():
        for out in engine.step():
            outputs[out.request_id] = out
        if executor is not None and decode_from is None and len(outputs) == len(prompts):
            decode_from, decode_t0 = executor.stats(), time.perf_counter()
    return [outputs[str(i)] for i in range(len(prompts))], decode_from, decode_t0


def plot_timelines(timelines: list[tuple[str, tuple[int, int], list]], path: str, steps: int = 3) -> None:
    """One panel per layout: each rank's busy spans over its last ``steps`` engine steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(timelines), 1, figsize=(11, 1.2 + 0.7 * sum(t[1][0] * t[1][1] for t in timelines)),
                             squeeze=False)
    cmap = plt.get_cmap("tab10")
    colors = [cmap(k) for k in range(10)]
    for ax, (name, (tp, _), spans) in zip(axes[:, 0], timelines, strict=True):
        driver = spans[0]
        per_step = 2 * max(1, max((s.micro_batch for s in driver), default=0) + 1)  # forwards + samplings
        start = driver[-min(len(driver), steps * per_step)].start if driver else 0.0
        end = max((s.end for rank in spans for s in rank), default=start)
        for rank, rank_spans in enumerate(spans):
            for s in rank_spans:
                if s.end < start:
                    continue
                ax.broken_barh([((s.start - start) * 1e3, (s.end - s.start) * 1e3)], (rank - 0.4, 0.8),
                               facecolors=colors[s.micro_batch % len(colors)], edgecolor="black", linewidth=0.3)
        ax.set_yticks(range(len(spans)))
        ax.set_yticklabels([f"stage {r // tp} / tp {r % tp}" for r in range(len(spans))])
        ax.invert_yaxis()
        ax.set_xlim(0, (end - start) * 1e3)
        ax.set_xlabel("ms (colour: micro-batch)")
        ax.set_title(f"{name}: last {steps} steps", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    if args.model is None:
        from pagoda.weights.default_model import default_model_path

        args.model = default_model_path()
    if args.head_twin:
        import tempfile

        from pagoda.bench.random_model import build_head_twin

        heads, kv_heads = (int(x) for x in args.head_twin.split("/"))
        with tempfile.TemporaryDirectory(prefix="pagoda-head-twin-") as twin_dir:
            print(f"random-weight twin of {os.path.basename(args.model)} with {heads} / {kv_heads} heads")
            args.model = build_head_twin(args.model, heads, kv_heads, twin_dir, args.seed)
            return _run_layouts(args)
    return _run_layouts(args)


def _run_layouts(args: argparse.Namespace) -> int:
    from pagoda.weights.model_loader import ModelFiles

    vocab = int(ModelFiles(args.model).hf_config()["vocab_size"])
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(3, min(vocab, 20000)) for _ in range(args.prompt_len)] for _ in range(args.batch_size)]
    results, timelines, reference = [], [], None
    for spec in args.layouts.split(","):
        result, tokens, timeline, shape = _run_layout(args, spec, prompts, reference)
        reference = reference if reference is not None else tokens
        results.append(result)
        if timeline is not None:
            timelines.append((spec, shape, timeline))
        print(f"  {spec}: {result.wall_s:.1f} s", flush=True)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.0f}%"

    print(f"\nB = {args.batch_size}, prompt {args.prompt_len}, output {args.output_len} tokens, {os.cpu_count()} cores")
    print(f"{'layout':<8} {'ranks x thr':>11} {'wall s':>7} {'gen tok/s':>9} {'total tok/s':>11} "
          f"{'comm':>5} {'bubble':>6} {'decode':>6} {'balance':>7} {'same tokens':>11}")
    for r in results:
        print(f"{r.layout:<8} {f'{r.ranks} x {r.threads_per_rank}':>11} {r.wall_s:>7.2f} {r.generated_tok_s:>9.1f} "
              f"{r.total_tok_s:>11.1f} {pct(r.comm_share):>5} {pct(r.bubble_rate):>6} {pct(r.decode_bubble_rate):>6} "
              f"{'-' if r.balance is None else f'{r.balance:.2f}':>7} {'yes' if r.same_tokens else 'NO':>11}")
    for r in results:
        if r.stage_layers and r.suggested_stage_layers != r.stage_layers:
            print(f"{r.layout}: stages ran {'/'.join(map(str, r.stage_layers))} layers; the decode phase's work "
                  f"suggests --pipeline-stage-layers {','.join(map(str, r.suggested_stage_layers))}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "parallel.json"), "w") as f:
        json.dump({"args": vars(args) | {"_bench_run": None, "_run": None}, "results": [asdict(r) for r in results]},
                  f, indent=2, default=str)
    if timelines:
        path = os.path.join(args.out, "parallel_timeline.png")
        plot_timelines(timelines, path)
        print(f"timeline: {path}")
    return 0 if all(r.same_tokens for r in results) else 1
