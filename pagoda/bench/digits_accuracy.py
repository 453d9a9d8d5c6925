"""Few-step quality of Pagoda's sampler presets on the bundled digits model (a trained network, not an oracle).

For every preset and step count, 256 samples (seeds 0..255, so every cell starts from the same noise) are drawn
through the diffusion engine from the model's "any digit" class and judged by a digits classifier (an MLP on
the real digits): the share it labels with confidence ≥ 0.9, and the Fréchet distance between its hidden
features of the samples and of all 1797 real digits (FID's formula in a 64-feature space). Baselines: 256 real
digits (the floor for this sample size) and Gaussian noise.

    pagoda bench digits-accuracy [--samples 256] [--plot digits_accuracy.png]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pagoda.diffusion.digits import WEIGHTS_DIR
from pagoda.diffusion.digits.classifier import DigitsClassifier
from pagoda.diffusion.pipeline import GenerationOptions, ImagePipeline

HELP = "few-step quality of the sampler presets on the bundled digits model"


PRESETS = ("UniPC AYS", "UniPC Trailing", "DDIM Trailing", "DPM++ 2M Karras", "Euler A")
STEPS = (5, 6, 8, 10, 15, 20, 50)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--model", default=WEIGHTS_DIR)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", default="digits_accuracy.png")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)

    clf = DigitsClassifier()
    pipe = ImagePipeline.from_pretrained(args.model, max_batch_size=args.samples)
    n = args.samples
    real = torch.from_numpy(clf.real_images[np.random.default_rng(0).permutation(len(clf.real_images))[:n]])
    noise = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    print(f"{n} samples per cell; confident = top class probability ≥ {args.threshold}; "
          f"FD in the classifier's 64 hidden features vs all {len(clf.real_images)} real digits")
    print(f"baselines: {n} real digits {clf.confident_share(real, args.threshold):.1%} confident, "
          f"FD {clf.frechet_distance(real):.2f}; Gaussian noise {clf.confident_share(noise, args.threshold):.1%}, "
          f"FD {clf.frechet_distance(noise):.1f}\n")

    conf: dict[str, list[float]] = {p: [] for p in PRESETS}
    fd: dict[str, list[float]] = {p: [] for p in PRESETS}
    seeds = list(range(n))
    t0 = time.perf_counter()
    for preset in PRESETS:
        for steps in STEPS:
            x = pipe.generate_samples([None] * n, seeds, GenerationOptions(preset, steps))
            conf[preset].append(clf.confident_share(x, args.threshold))
            fd[preset].append(clf.frechet_distance(x))
    print(f"sampled in {time.perf_counter() - t0:.0f}s; a share near 70% has a standard error of "
          f"{100 * (0.7 * 0.3 / n) ** 0.5:.1f} points at {n} samples\n")

    header = "| preset | " + " | ".join(str(s) for s in STEPS) + " |"
    rule = "|---|" + "---:|" * len(STEPS)
    print("Confident share (higher is better), by steps:\n")
    print(header + "\n" + rule)
    for p in PRESETS:
        print(f"| {p} | " + " | ".join(f"{v:.1%}" for v in conf[p]) + " |")
    print("\nFréchet distance in classifier features (lower is better), by steps:\n")
    print(header + "\n" + rule)
    for p in PRESETS:
        print(f"| {p} | " + " | ".join(f"{v:.2f}" for v in fd[p]) + " |")

    few = [i for i, s in enumerate(STEPS) if s <= 10]
    for unipc in ("UniPC AYS", "UniPC Trailing"):
        wins = sum(fd[unipc][i] < fd["DDIM Trailing"][i] for i in few)
        print(f"\n{unipc} vs DDIM Trailing at ≤ 10 steps: lower FD in {wins}/{len(few)} step counts", end="")
    print()

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for p in PRESETS:
        a1.plot(STEPS, [100 * v for v in conf[p]], marker="o", label=p)
        a2.plot(STEPS, fd[p], marker="o", label=p)
    a2.axhline(clf.frechet_distance(real), color="gray", ls="--", lw=1, label=f"{n} real digits")
    for ax, title in ((a1, f"confidently classified (%), p ≥ {args.threshold}"), (a2, "Fréchet distance (features)")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(STEPS, [str(s) for s in STEPS])
        ax.set_xlabel("steps (model evaluations)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    a2.set_yscale("log")
    a2.legend(fontsize=8)
    fig.suptitle(f"Digits model, {n} samples per point")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)
    print(f"wrote {args.plot}")
    return 0
