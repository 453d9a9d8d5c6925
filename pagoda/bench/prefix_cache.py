"""`pagoda bench prefix`: what the radix-tree prefix cache saves, cache on vs off in one run.

1. Generated shared prefix (as SGLang's ``generated-shared-prefix`` set): ``groups`` x
   ``questions`` requests, each group sharing a ``system_len``-token system prompt, questions of
   exactly ``question_len`` tokens, ``output_len`` generated tokens; all submitted at once.
   Prints prompt tokens computed, cache hit rate and the ideal one for the workload (every
   group's first request computes its system prompt once), mean TTFT and total time.
2. Multi-turn chat: each conversation's second turn resends the first turn and its answer;
   prints the second turn's time to first token with the cache on and off.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass

HELP = "prefix caching: shared system prompts and multi-turn chat, cache on vs off"


@dataclass(frozen=True)
class SharedPrefixResult:
    cache: bool
    requests: int
    prompt_tokens: int
    prompt_tokens_computed: int
    hit_rate: float
    ideal_hit_rate: float
    mean_ttft_s: float
    total_s: float


@dataclass(frozen=True)
class MultiTurnResult:
    cache: bool
    conversations: int
    mean_second_turn_ttft_s: float
    mean_first_turn_ttft_s: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--system-len", type=int, default=1024)
    parser.add_argument("--question-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turn-len", type=int, default=512, help="first turn's prompt length (tokens)")
    parser.add_argument("--quick", action="store_true", help="4 groups x 4 questions, 4 conversations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_results", help="directory for JSON and PNG")


def _llm(model: str | None, cache: bool):
    from pagoda import LLM

    return LLM(model, enable_prefix_caching=cache, max_num_seqs=64, max_num_batched_tokens=2048,
               kv_cache_memory_gb=2.0, show_progress=False)


def _random_ids(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(min(100, vocab // 4), vocab) for _ in range(n)]


def run_shared_prefix(model: str | None, cache: bool, groups: int, questions: int, system_len: int,
                      question_len: int, output_len: int, seed: int) -> SharedPrefixResult:
    from tqdm import tqdm

    from pagoda import SamplingParams

    rng = random.Random(seed)
    llm = _llm(model, cache)
    engine = llm.engine
    vocab = engine.model_config.vocab_size
    prompts = []
    for _ in range(groups):
        system = _random_ids(rng, system_len, vocab)
        prompts += [system + _random_ids(rng, question_len, vocab) for _ in range(questions)]
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    start = time.monotonic()
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, params, arrival_time=start)
    ttfts = []
    with tqdm(total=len(prompts), desc=f"shared prefix, cache {'on' if cache else 'off'}", unit=" req") as bar:
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    ttfts.append(out.metrics.first_token_time - out.metrics.arrival_time)
                    bar.update(1)
    total = time.monotonic() - start
    stats = engine.get_stats()
    prompt_tokens = sum(len(p) for p in prompts)
    ideal = groups * (questions - 1) * (system_len // engine.cache_config.block_size
                                         * engine.cache_config.block_size) / prompt_tokens
    return SharedPrefixResult(cache, len(prompts), prompt_tokens, stats.prompt_tokens_total,
                              stats.prefix_cache_hits_total / max(1, stats.prefix_cache_queries_total),
                              ideal, statistics.fmean(ttfts), total)


def run_multi_turn(model: str | None, cache: bool, conversations: int, turn_len: int, output_len: int,
                   question_len: int, seed: int) -> MultiTurnResult:
    from pagoda import SamplingParams

    rng = random.Random(seed)
    llm = _llm(model, cache)
    vocab = llm.engine.model_config.vocab_size
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    first, second = [], []
    for _ in range(conversations):  # one conversation at a time: TTFT is then the prefill alone
        turn1 = _random_ids(rng, turn_len, vocab)
        out = llm.generate([turn1], params, use_tqdm=False)[0]
        first.append(out.metrics.first_token_time - out.metrics.arrival_time)
        turn2 = turn1 + out.outputs[0].token_ids + _random_ids(rng, question_len, vocab)
        out2 = llm.generate([turn2], params, use_tqdm=False)[0]
        second.append(out2.metrics.first_token_time - out2.metrics.arrival_time)
    return MultiTurnResult(cache, conversations, statistics.fmean(second), statistics.fmean(first))


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.groups, args.questions, args.conversations = 4, 4, 4
    os.makedirs(args.out, exist_ok=True)
    shared = [run_shared_prefix(args.model, cache, args.groups, args.questions, args.system_len,
                                args.question_len, args.output_len, args.seed) for cache in (False, True)]
    print(f"\nShared prefix: {args.groups} groups x {args.questions} questions, system {args.system_len} "
          f"tokens, question {args.question_len}, output {args.output_len}")
    print(f"{'cache':<6} {'prompt tok':>10} {'computed':>10} {'hit rate':>9} {'ideal':>7} {'TTFT s':>8} {'total s':>8}")
    for r in shared:
        print(f"{'on' if r.cache else 'off':<6} {r.prompt_tokens:>10} {r.prompt_tokens_computed:>10} "
              f"{r.hit_rate:>9.1%} {r.ideal_hit_rate:>7.1%} {r.mean_ttft_s:>8.2f} {r.total_s:>8.1f}")
    off, on = shared
    print(f"hit rate {on.hit_rate / on.ideal_hit_rate:.1%} of ideal; end-to-end {off.total_s / on.total_s:.2f}x "
          f"shorter with the cache")

    turns = [run_multi_turn(args.model, cache, args.conversations, args.turn_len, args.output_len,
                            args.question_len, args.seed) for cache in (False, True)]
    print(f"\nMulti-turn: {args.conversations} conversations, first turn {args.turn_len} tokens + "
          f"{args.output_len} answer, second turn adds {args.question_len}")
    for t in turns:
        print(f"cache {'on ' if t.cache else 'off'}: second-turn TTFT {t.mean_second_turn_ttft_s * 1e3:8.1f} ms "
              f"(first turn {t.mean_first_turn_ttft_s * 1e3:.1f} ms)")
    print(f"second-turn TTFT {turns[0].mean_second_turn_ttft_s / turns[1].mean_second_turn_ttft_s:.1f}x lower "
          f"with the cache")

    with open(os.path.join(args.out, "prefix_cache.json"), "w") as f:
        json.dump({"shared_prefix": [asdict(r) for r in shared], "multi_turn": [asdict(r) for r in turns]}, f,
                  indent=2)
    _plot(shared, turns, os.path.join(args.out, "prefix_cache.png"))
    print(f"\nwrote {args.out}/prefix_cache.json and prefix_cache.png")
    return 0


def _plot(shared: list[SharedPrefixResult], turns: list[MultiTurnResult], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    labels = ["cache off", "cache on"]
    colors = ["#999999", "#2a7ab9"]
    axes[0].bar(labels, [r.total_s for r in shared], color=colors)
    axes[0].set_title("shared prefix: total time (s)")
    axes[1].bar(labels, [r.prompt_tokens_computed for r in shared], color=colors)
    axes[1].set_title("prompt tokens computed")
    axes[2].bar(labels, [r.mean_second_turn_ttft_s * 1e3 for r in turns], color=colors)
    axes[2].set_title("second chat turn: TTFT (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
