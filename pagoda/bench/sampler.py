"""Sampler micro-benchmark: milliseconds per call for batches of 1, 8 and 64 rows.

    pagoda bench sampler [--vocab 49152] [--iters 30]

Each case samples every row with the same settings; the time is the median over ``--iters``
calls after a warm-up (``--stat min`` when other work shares the machine: the least disturbed
call).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pagoda.sample.sampler import Sampler, SamplingBatch
from pagoda.sampling_params import SamplingParams

CASES: dict[str, dict] = {
    "greedy": dict(temperature=0),
    "temperature": dict(temperature=0.8),
    "seeded": dict(temperature=0.8, seed=0),
    "min_p": dict(temperature=0.8, min_p=0.05),
    "top_p": dict(temperature=0.8, top_p=0.9),
    "top_k": dict(temperature=0.8, top_k=50),
    "top_k+top_p": dict(temperature=0.8, top_k=50, top_p=0.9),
    "all truncation": dict(temperature=0.8, min_p=0.02, top_k=100, top_p=0.95),
    "top_k=1000": dict(temperature=0.8, top_k=1000),  # past the blocked topk: a full topk per row
    "penalties": dict(temperature=0.8, repetition_penalty=1.1, frequency_penalty=0.3, presence_penalty=0.2),
    "logprobs=5": dict(temperature=0.8, logprobs=5),
}

HELP = "sampler micro-benchmark: ms per call at batch 1, 8 and 64"


def lm_like_logits(rows: int, vocab: int) -> torch.Tensor:
    """Logits shaped like a small LM's (fit to SmolLM2-135M's: top token ~0.4 likely, top 50 hold
    ~0.95 of the mass, the 0.9-nucleus 10 tokens at the median and ~900 at the 90th percentile):
    a Gaussian bulk with a heavy right tail, sharper or flatter per row."""
    z = torch.randn(rows, vocab)
    return (2.0 * z + 0.6 * z.clamp_min(0) ** 2) * (0.6 + 0.8 * torch.rand(rows, 1))


def time_call(sampler: Sampler, logits: torch.Tensor, batch: SamplingBatch, iters: int, stat: str) -> float:
    sampler(logits, batch)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        sampler(logits, batch)
        times.append(time.perf_counter() - start)
    return (min(times) if stat == "min" else statistics.median(times)) * 1e3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--prompt-len", type=int, default=512, help="tokens seen by the penalties")
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--stat", choices=("median", "min"), default="median")


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    sizes = (1, 8, 64)
    sampler = Sampler({0}, torch.Generator().manual_seed(0))
    print(f"sampler, vocab {args.vocab}, {torch.get_num_threads()} threads; ms per call ({args.stat} of {args.iters})")
    print(f"{'case':<16}" + "".join(f"{'B=' + str(b):>10}" for b in sizes))
    for name, kwargs in CASES.items():
        row = f"{name:<16}"
        for b in sizes:
            logits = lm_like_logits(b, args.vocab)
            params = [SamplingParams(**kwargs) for _ in range(b)]
            batch = SamplingBatch(
                params=params,
                prompt_token_ids=[torch.randint(args.vocab, (args.prompt_len,)).tolist() for _ in range(b)],
                output_token_ids=[torch.randint(args.vocab, (args.output_len,)).tolist() for _ in range(b)],
                generators=[torch.Generator().manual_seed(i) if p.seed is not None else None
                            for i, p in enumerate(params)],
            )
            row += f"{time_call(sampler, logits, batch, args.iters, args.stat):>10.3f}"
        print(row)
    return 0
