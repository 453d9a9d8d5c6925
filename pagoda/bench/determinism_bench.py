"""What batch-invariant numerics cost: `pagoda bench throughput`'s fixed shapes (B prompts of 128
random tokens, each generating 128, generated tokens per second with prefill) for two source trees,
in interleaved rounds in one session (old, new, old, new, ...), medians and ranges.

    flock /tmp/pagoda-bench.lock python -m pagoda.bench.determinism_bench --old /work/main --new . --rounds 3

Each round runs each tree in a fresh process (PYTHONPATH=<tree>), so each gets its own build of the
C++ kernels and nothing is shared between them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys


def worker(batch_sizes: list[int], prompt_len: int, output_len: int, seed: int, deterministic: bool) -> None:
    from pagoda import LLM
    from pagoda.bench.fixed_shape import measure_pagoda

    options = {"deterministic": True} if deterministic else {}  # an old tree may not know the option
    llm = LLM(max_num_seqs=max(batch_sizes), show_progress=False, **options)
    results = measure_pagoda(llm, "pagoda", batch_sizes, prompt_len, output_len, seed=seed, progress=False)
    print(json.dumps({r.batch_size: r.tokens_per_s for r in results}))


def run_tree(tree: str, args: argparse.Namespace, seed: int, deterministic: bool = False) -> dict[int, float]:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--seed", str(seed), "--prompt-len",
           str(args.prompt_len), "--output-len", str(args.output_len), "--batch-sizes", *map(str, args.batch_sizes)]
    cmd += ["--deterministic"] if deterministic else []
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=os.path.abspath(tree)).stdout
    return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", default="/work/main")
    p.add_argument("--new", default=".")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true",
                   help="also run the new tree with deterministic=True (a third column)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.batch_sizes, args.prompt_len, args.output_len, args.seed, args.deterministic)
        return
    # name -> (tree, deterministic)
    variants = {"old": (args.old, False), "new": (args.new, False)}
    if args.deterministic:
        variants["new --deterministic"] = (args.new, True)
    runs: dict[str, list[dict[int, float]]] = {name: [] for name in variants}
    for r in range(args.rounds):
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in names:
            tree, deterministic = variants[name]
            runs[name].append(run_tree(tree, args, seed=args.seed + r, deterministic=deterministic))
            print(f"round {r + 1} {name}: " + ", ".join(f"B={b} {v:.1f}" for b, v in runs[name][-1].items()),
                  flush=True)
    others = [name for name in variants if name != "old"]
    print("\n| B | " + " | ".join(f"{name} tok/s median (range)" for name in variants) + " | "
          + " | ".join(f"{name} / old" for name in others) + " |")
    print("|" + " --- |" * (1 + len(variants) + len(others)))
    for b in args.batch_sizes:
        medians = {name: statistics.median(x[b] for x in runs[name]) for name in variants}
        cells = [f"{medians[n]:.1f} ({min(x[b] for x in runs[n]):.1f}-{max(x[b] for x in runs[n]):.1f})"
                 for n in variants]
        ratios = [f"{medians[n] / medians['old']:.3f}" for n in others]
        print(f"| {b} | " + " | ".join(cells + ratios) + " |")


if __name__ == "__main__":
    main()
