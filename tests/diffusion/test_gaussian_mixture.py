"""The analytic denoiser is exact, and the presets converge to the true ODE solution as they should."""

from __future__ import annotations

import math

import torch

from pagoda.diffusion import NoiseSchedule, get_preset
from pagoda.diffusion.gaussian_mixture import GaussianMixture, sliced_wasserstein


def test_denoiser_is_tweedie_of_the_exact_density():
    gm = GaussianMixture.random(num_components=3, dim=4, seed=1)
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    for sigma in (0.05, 0.7, 9.0):
        var = gm.stds**2 + sigma**2
        comps = [torch.log(w) - 0.5 * ((x - m) ** 2).sum(1) / v - 2 * torch.log(v)
                 for w, m, v in zip(gm.weights, gm.means, var)]
        logp = torch.logsumexp(torch.stack(comps), 0).sum()
        (score,) = torch.autograd.grad(logp, x)
        expected = x + sigma**2 * score  # Tweedie's formula
        torch.testing.assert_close(gm.denoise(x.detach(), sigma), expected.detach(), rtol=1e-10, atol=1e-10)


def _run(name, gm, noise, x, n):
    p = get_preset(name)
    s = p.schedule(noise, n)
    state = p.solver.init_state()
    for i in range(n):
        x, state = p.solver.step(x, gm.denoise(x, s.sigmas[i]), s.sigmas, i, state)
    return x


def test_presets_against_the_ode_reference():
    gm = GaussianMixture.random(num_components=4, dim=4, seed=0)
    noise = NoiseSchedule.stable_diffusion()
    x_T = torch.randn(48, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_T = x_T * math.sqrt(1 + noise.sigma_max**2)
    ref = gm.reference_solution(x_T, noise.sigma_max, num_steps=100)

    def err(name, n):
        return float((_run(name, gm, noise, x_T, n) - ref).norm(dim=1).mean())

    unipc = [err("UniPC AYS", n) for n in (5, 10, 50)]
    assert unipc[0] > unipc[1] > unipc[2] and unipc[2] < 0.05  # converges
    assert err("UniPC AYS", 10) < err("DDIM Trailing", 10)  # the brief's claim, at 10 steps
    assert err("DPM++ 2M Karras", 50) < 0.05


def test_euler_ancestral_reaches_the_mixture_distribution():
    gm = GaussianMixture.random(num_components=3, dim=2, seed=2)
    noise = NoiseSchedule.stable_diffusion()
    g = torch.Generator().manual_seed(0)
    truth = gm.sample(600, g)
    starts = torch.randn(600, 2, generator=g, dtype=torch.float64) * math.sqrt(1 + noise.sigma_max**2)
    p = get_preset("Euler A")
    s = p.schedule(noise, 40)
    x, gen = starts, torch.Generator().manual_seed(1)
    for i in range(40):
        x, _ = p.solver.step(x, gm.denoise(x, s.sigmas[i]), s.sigmas, i, None, gen)
    floor = sliced_wasserstein(gm.sample(600, g), truth)
    assert sliced_wasserstein(x, truth) < 3 * floor
    assert sliced_wasserstein(starts / 10, truth) > 10 * floor  # the metric does tell distributions apart
