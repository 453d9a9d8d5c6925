"""Few-step accuracy of Pagoda's sampler presets on an analytic Gaussian-mixture denoiser (exact score).

Under Stable Diffusion's noise schedule (so the SD1.5 AYS table applies), every deterministic preset starts
from the same noise x_T = sqrt(1 + σ_max²)·ε and is compared with a high-accuracy solution of the
probability-flow ODE from the same start (RK4 in log σ). Euler A is stochastic and aims at the distribution,
not the ODE solution, so it gets a sliced-Wasserstein distance to fresh samples of the true mixture (the
deterministic presets get one too, for comparison; two independent true samples give the noise floor).

    pagoda bench diffusion-accuracy [--points 256] [--plot diffusion_accuracy.png]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from pagoda.diffusion import NoiseSchedule, get_preset
from pagoda.diffusion.gaussian_mixture import GaussianMixture, sliced_wasserstein

HELP = "few-step accuracy of the sampler presets on an analytic Gaussian-mixture denoiser"


STEPS = (5, 6, 8, 10, 15, 20, 50)
DETERMINISTIC = ("UniPC AYS", "UniPC Trailing", "DDIM Trailing", "DPM++ 2M Karras")


def sample(preset_name: str, gm: GaussianMixture, noise: NoiseSchedule, x_T: torch.Tensor, n: int,
           seed: int = 0) -> torch.Tensor:
    preset = get_preset(preset_name)
    schedule = preset.schedule(noise, n)
    assert abs(schedule.sigmas[0] - noise.sigma_max) < 1e-3  # every preset starts at σ_max
    x, state = x_T.clone(), preset.solver.init_state()
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        x, state = preset.solver.step(x, gm.denoise(x, schedule.sigmas[i]), schedule.sigmas, i, state, g)
    return x


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, default=256)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--reference-steps", type=int, default=500)
    parser.add_argument("--plot", default="diffusion_accuracy.png")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(2)

    gm = GaussianMixture.random(num_components=8, dim=args.dim, seed=0)
    noise = NoiseSchedule.stable_diffusion()
    smax = noise.sigma_max
    x_T = torch.randn(args.points, gm.dim, generator=torch.Generator().manual_seed(1),
                      dtype=torch.float64) * math.sqrt(1 + smax**2)
    t0 = time.perf_counter()
    ref = gm.reference_solution(x_T, smax, args.reference_steps)
    ref_half = gm.reference_solution(x_T, smax, args.reference_steps // 2)
    ref_err = float((ref - ref_half).pow(2).sum(1).mean().sqrt())
    print(f"reference: RK4, {args.reference_steps} steps in log σ ({time.perf_counter() - t0:.0f}s); "
          f"change vs half the steps {ref_err:.1e}")
    print(f"mixture: {len(gm.weights)} components in {gm.dim} dims, stds 0.1–0.4; {args.points} trajectories; "
          f"σ_max = {smax:.4f}\n")

    errors: dict[str, list[float]] = {}
    print("RMS error ‖x − x_ref‖ (lower is better)")
    print(f"| preset | {' | '.join(str(n) for n in STEPS)} |")
    print(f"| --- |{' --- |' * len(STEPS)}")
    for name in DETERMINISTIC:
        errors[name] = [float((sample(name, gm, noise, x_T, n) - ref).pow(2).sum(1).mean().sqrt()) for n in STEPS]
        print(f"| {name} | {' | '.join(f'{e:.4f}' for e in errors[name])} |")

    g = torch.Generator().manual_seed(2)
    m = args.points * 8
    truth = gm.sample(m, g)
    starts = torch.randn(m, gm.dim, generator=g, dtype=torch.float64) * math.sqrt(1 + smax**2)
    # the estimate is noisy: the floor is its mean over independent true sample sets
    floor = sum(sliced_wasserstein(gm.sample(m, g), truth) for _ in range(8)) / 8
    print(f"\nSliced Wasserstein-2 distance to the true mixture ({m} samples; "
          f"independent true samples score {floor:.4f} on average)")
    print(f"| preset | {' | '.join(str(n) for n in STEPS)} |")
    print(f"| --- |{' --- |' * len(STEPS)}")
    sw: dict[str, list[float]] = {}
    for name in (*DETERMINISTIC, "Euler A"):
        sw[name] = [sliced_wasserstein(sample(name, gm, noise, starts, n, seed=3), truth) for n in STEPS]
        print(f"| {name} | {' | '.join(f'{e:.4f}' for e in sw[name])} |")

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, errs in errors.items():
        a1.plot(STEPS, errs, marker="o", label=name)
    a1.set(xscale="log", yscale="log", xlabel="steps", ylabel="RMS error vs ODE reference",
           title="Deterministic presets: error vs exact ODE solution")
    for name, d in sw.items():
        a2.plot(STEPS, d, marker="o", label=name, linestyle="--" if name == "Euler A" else "-")
    a2.axhline(floor, color="gray", linewidth=0.8, label="sampling noise floor")
    a2.set(xscale="log", yscale="log", xlabel="steps", ylabel="sliced W2 to true mixture",
           title="Distribution distance")
    for ax in (a1, a2):
        ax.set_xticks(STEPS, [str(s) for s in STEPS])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"\nwrote {args.plot}")
    return 0
