"""`pagoda bench spec`: generated tokens per second with and without speculative decoding, per
workload and batch size, with acceptance, in interleaved rounds (plain, speculative, plain, ...) in
one process; and a plot.

Workloads: "grounded" (``data/grounded_prompts.json``: requests that quote, edit or convert text
given in the prompt, each timed alone at B = 1 and reported one by one) and "random" (prompts of
random token ids, as `pagoda bench throughput`, at each batch size). Greedy; prefill is timed;
the prefix cache is off so that rounds do not turn into cache hits.

    flock /tmp/pagoda-bench.lock pagoda bench spec --rounds 3 --plot spec.png

Any ``--speculative-config`` is measured the same way, e.g. a self-draft of the default model's first
8 layers (of 30):

    pagoda bench spec --speculative-config '{"method": "draft_model", "draft_num_layers": 8,
        "num_speculative_tokens": 3}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

HELP = "speculative decoding: tokens/s with and without it, per workload and batch size, and acceptance"
DEFAULT_SPEC = '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4}'


def grounded_prompts() -> list[dict[str, str]]:
    """The committed input-grounded workload: [{"name", "content"}]."""
    text = resources.files("pagoda.bench").joinpath("data/grounded_prompts.json").read_text()
    return list(json.loads(text)["prompts"])


@dataclass
class Case:
    """One measured case (a grounded prompt at B = 1, or a random batch), all rounds."""

    workload: str
    name: str
    batch_size: int
    plain_s: list[float] = field(default_factory=list)
    spec_s: list[float] = field(default_factory=list)
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0

    def tps(self, seconds: list[float]) -> float:
        return self.tokens / statistics.median(seconds)

    @property
    def speedup(self) -> float:
        return statistics.median(self.plain_s) / statistics.median(self.spec_s)

    @property
    def ratios(self) -> list[float]:
        return [p / s for p, s in zip(self.plain_s, self.spec_s, strict=True)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    p.add_argument("--speculative-config", default=DEFAULT_SPEC, metavar="JSON")
    p.add_argument("--workloads", nargs="+", default=["grounded", "random"], choices=["grounded", "random"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64], help="random workload")
    p.add_argument("--prompt-len", type=int, default=128, help="random workload")
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--plot", default=None, metavar="PNG")
    p.add_argument("--json", default=None, metavar="PATH", help="write every case's timings")


def _timed(llm: Any, prompts: list[Any], params: Any, chat: bool) -> tuple[float, int]:
    start = time.perf_counter()
    outs = llm.chat(prompts, params, use_tqdm=False) if chat else llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return seconds, sum(len(o.outputs[0].token_ids) for o in outs)


def run(args: argparse.Namespace) -> int:
    from pagoda import LLM, SamplingParams
    from pagoda.bench.fixed_shape import random_prompts, warm_up
    from pagoda.spec.config import SpeculativeConfig

    spec_config = SpeculativeConfig.from_dict(args.speculative_config)
    common = dict(model=args.model, max_num_seqs=max(args.batch_sizes), enable_prefix_caching=False,
                  show_progress=False)
    plain = LLM(**common)
    spec = LLM(**common, speculative_config=args.speculative_config)
    for llm in (plain, spec):
        warm_up(llm)
    vocab = plain.engine.model_config.vocab_size
    cases: list[tuple[Case, list[Any], Any, bool]] = []
    if "grounded" in args.workloads:
        params = SamplingParams(temperature=0, max_tokens=args.output_len)
        for p in grounded_prompts():
            cases.append((Case("grounded", p["name"], 1), [[{"role": "user", "content": p["content"]}]], params, True))
    if "random" in args.workloads:
        params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
        for b in args.batch_sizes:
            prompts = random_prompts(b, args.prompt_len, vocab, f"spec-B{b}")
            cases.append((Case("random", f"B={b}", b), prompts, params, False))
    print(f"speculative_config: {spec_config}", flush=True)
    for r in range(args.rounds):
        for case, prompts, params, chat in cases:
            order = [("plain", plain), ("spec", spec)] if r % 2 == 0 else [("spec", spec), ("plain", plain)]
            for name, llm in order:
                before = llm.engine.get_stats().spec
                seconds, tokens = _timed(llm, prompts, params, chat)
                if name == "plain":
                    case.plain_s.append(seconds)
                else:
                    case.spec_s.append(seconds)
                    after = llm.engine.get_stats().spec
                    if r == 0 and before is not None and after is not None:
                        case.drafted = after.num_draft_tokens - before.num_draft_tokens
                        case.accepted = after.num_accepted_tokens - before.num_accepted_tokens
                case.tokens = tokens
            print(f"round {r + 1} {case.workload} {case.name}: plain {case.tokens / case.plain_s[-1]:.1f} tok/s, "
                  f"spec {case.tokens / case.spec_s[-1]:.1f} tok/s", flush=True)
    _print_table([c for c, *_ in cases])
    if args.json:
        with open(args.json, "w") as f:
            json.dump([c.__dict__ for c, *_ in cases], f, indent=1)
    if args.plot:
        _plot([c for c, *_ in cases], args.plot, _label(spec_config))
        print(f"plot: {args.plot}")
    return 0


def _print_table(cases: list[Case]) -> None:
    print("\n| workload | case | B | tokens | plain tok/s | spec tok/s | speedup median (range) | acceptance |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for c in cases:
        acc = f"{c.accepted}/{c.drafted} = {c.accepted / c.drafted:.2f}" if c.drafted else "no drafts"
        print(f"| {c.workload} | {c.name} | {c.batch_size} | {c.tokens} | {c.tps(c.plain_s):.1f} | {c.tps(c.spec_s):.1f} "
              f"| {c.speedup:.2f}x ({min(c.ratios):.2f}-{max(c.ratios):.2f}) | {acc} |")
    grounded = [c for c in cases if c.workload == "grounded"]
    if grounded:
        total_plain = sum(statistics.median(c.plain_s) for c in grounded)
        total_spec = sum(statistics.median(c.spec_s) for c in grounded)
        tokens = sum(c.tokens for c in grounded)
        print(f"\ngrounded, all prompts at B=1: plain {tokens / total_plain:.1f} tok/s, "
              f"spec {tokens / total_spec:.1f} tok/s, {total_plain / total_spec:.2f}x; "
              f"median per prompt {statistics.median(c.speedup for c in grounded):.2f}x")


def _label(config: Any) -> str:
    if config.method == "ngram":
        return "n-gram"
    layers = f", first {config.draft_num_layers} layers" if config.draft_num_layers else ""
    return f"draft model{layers}, k={config.num_speculative_tokens}"


def _plot(cases: list[Case], path: str, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(cases)), 4.5))
    labels = [f"{c.name}" if c.workload == "grounded" else f"random {c.name}" for c in cases]
    x = range(len(cases))
    ax.bar([i - 0.2 for i in x], [c.tps(c.plain_s) for c in cases], 0.4, label="plain")
    ax.bar([i + 0.2 for i in x], [c.tps(c.spec_s) for c in cases], 0.4, label=f"speculative ({label})")
    for i, c in enumerate(cases):
        ax.annotate(f"{c.speedup:.2f}x", (i, max(c.tps(c.plain_s), c.tps(c.spec_s))), ha="center", va="bottom",
                    fontsize=7)
    ax.set_xticks(list(x), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("generated tokens / s (prefill included)")
    ax.set_title("speculative decoding: grounded prompts at B=1, random prompts by batch size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
