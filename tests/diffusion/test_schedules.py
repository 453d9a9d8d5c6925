"""Schedules against diffusers and against the published formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import AysSchedules
from diffusion_refs import SD_CONFIG

from pagoda.diffusion import (
    AYS_NOISE_LEVELS,
    AYS_TIMESTEPS,
    NoiseSchedule,
    ays_sigmas,
    get_preset,
    loglinear_interp,
    make_schedule,
    timesteps,
)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_noise_schedule_matches_diffusers(beta_schedule, zero_snr):
    cfg = {"beta_schedule": beta_schedule, "beta_start": 0.00085, "beta_end": 0.012,
           "rescale_betas_zero_snr": zero_snr}
    theirs = DDIMScheduler(**cfg)
    ours = NoiseSchedule.from_config(cfg)
    np.testing.assert_allclose(ours.alphas_cumprod[:-1], theirs.alphas_cumprod.double().numpy()[:-1], rtol=1e-7)
    if zero_snr:
        # Lin et al.: the last timestep has zero SNR (represented by ᾱ = 2^-24, as diffusers does)
        assert ours.alphas_cumprod[-1] == 2**-24 and ours.sigma_max > 4000


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("n", [1, 6, 10, 25, 50])
def test_integer_spacings_match_diffusers_ddim(spacing, n):
    theirs = DDIMScheduler(**SD_CONFIG, timestep_spacing=spacing, steps_offset=0)
    theirs.set_timesteps(n)
    assert timesteps(spacing, n).tolist() == theirs.timesteps.tolist()


def test_trailing_formula():
    # t_i = round(T − i·T/N) − 1
    assert timesteps("trailing", 10).tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    for n in (3, 7, 30):
        expected = [round(1000 - i * 1000 / n) - 1 for i in range(n)]
        assert timesteps("trailing", n).tolist() == expected


@pytest.mark.parametrize("n", [5, 10, 30])
def test_linspace_schedule_matches_diffusers_euler(n):
    theirs = EulerAncestralDiscreteScheduler(**SD_CONFIG)
    theirs.set_timesteps(n)
    ours = make_schedule("linspace", NoiseSchedule.from_config(SD_CONFIG), n)
    np.testing.assert_allclose(ours.timesteps, theirs.timesteps.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.sigmas, theirs.sigmas.numpy(), rtol=1e-6)


def test_trailing_sigmas_match_diffusers_unipc():
    theirs = UniPCMultistepScheduler(**SD_CONFIG, timestep_spacing="trailing")
    theirs.set_timesteps(10)
    ours = make_schedule("trailing", NoiseSchedule.from_config(SD_CONFIG), 10)
    np.testing.assert_allclose(ours.sigmas, theirs.sigmas.numpy(), rtol=1e-6)
    assert ours.sigmas[-1] == 0.0


def test_ays_tables_match_diffusers():
    assert list(AYS_TIMESTEPS["sd15"]) == AysSchedules["StableDiffusionTimesteps"]
    assert list(AYS_TIMESTEPS["sdxl"]) == AysSchedules["StableDiffusionXLTimesteps"]
    # SVD: identical. SD1.5: diffusers' list is not NVIDIA's to the digit (e.g. 3.861 vs 3.8636745985, up to
    # 0.31% apart); SDXL index 9: diffusers 0.113, NVIDIA (and ComfyUI) 0.1114188177. We keep NVIDIA's values.
    np.testing.assert_array_equal(ays_sigmas("svd", 10), AysSchedules["StableDiffusionVideoSigmas"][:-1] + [0.0])
    np.testing.assert_allclose(ays_sigmas("sd15", 10), AysSchedules["StableDiffusionSigmas"], rtol=3.5e-3)
    sdxl, theirs = ays_sigmas("sdxl", 10), np.array(AysSchedules["StableDiffusionXLSigmas"])
    np.testing.assert_allclose(np.delete(sdxl, 9), np.delete(theirs, 9), rtol=3.5e-3)
    assert abs(sdxl[9] - 0.1114188177) < 1e-12 and theirs[9] == 0.113


def test_ays_published_last_values_and_final_zero():
    assert AYS_NOISE_LEVELS["sd15"][-1] == AYS_NOISE_LEVELS["sdxl"][-1] == 0.0291671582
    assert AYS_NOISE_LEVELS["svd"][-1] == 0.002
    for model in AYS_NOISE_LEVELS:
        for n in (4, 10, 20):
            s = ays_sigmas(model, n)
            assert len(s) == n + 1 and s[-1] == 0.0 and np.all(np.diff(s) < 0)
            assert s[0] == pytest.approx(AYS_NOISE_LEVELS[model][0], rel=1e-12)


@pytest.mark.parametrize("n", [5, 8, 15, 20, 50])
def test_ays_loglinear_interpolation_formula(n):
    """log σ linear in position between the published points, ends kept, last replaced by 0."""
    levels = np.array(AYS_NOISE_LEVELS["sd15"])
    s = ays_sigmas("sd15", n)
    pos = np.linspace(0, 1, n + 1)  # position of each new point, in the reversed (increasing) order
    knots = np.linspace(0, 1, 11)
    log_rev = np.log(levels[::-1])
    for j, sigma in enumerate(s[:-1]):
        x = pos[n - j]
        k = min(int(np.searchsorted(knots, x, side="right")) - 1, 9)
        w = (x - knots[k]) / (knots[k + 1] - knots[k])
        assert np.isclose(np.log(sigma), (1 - w) * log_rev[k] + w * log_rev[k + 1], atol=1e-12)
    # the 11-point resampling of the 11-point table is the identity
    np.testing.assert_allclose(loglinear_interp(levels, 11), levels, rtol=1e-12)


def test_ays_schedule_in_timesteps_and_sigmas():
    ns = NoiseSchedule.stable_diffusion()
    ten = get_preset("UniPC AYS").schedule(ns, 10)
    assert ten.timesteps == tuple(float(t) for t in AysSchedules["StableDiffusionTimesteps"])
    # σ(t) of the published timesteps agrees with the published σ table to its precision
    np.testing.assert_allclose(ten.sigmas[:-1], AYS_NOISE_LEVELS["sd15"][:-1], rtol=2e-3)
    twenty = get_preset("UniPC AYS").schedule(ns, 20)
    np.testing.assert_allclose(twenty.sigmas, ays_sigmas("sd15", 20), rtol=1e-6)
    # model timesteps map back onto the σ the solver uses
    np.testing.assert_allclose(ns.sigma_to_t(np.array(twenty.sigmas[:-1])), twenty.timesteps, atol=1e-6)
    assert twenty.timesteps[0] == pytest.approx(999, abs=1e-3)


def test_karras_schedule_matches_diffusers_dpm():
    from diffusers import DPMSolverMultistepScheduler

    theirs = DPMSolverMultistepScheduler(**SD_CONFIG, use_karras_sigmas=True)
    theirs.set_timesteps(12)
    ours = make_schedule("karras", NoiseSchedule.from_config(SD_CONFIG), 12)
    np.testing.assert_allclose(ours.sigmas, theirs.sigmas.numpy(), rtol=1e-6)
    assert list(ours.timesteps) == theirs.timesteps.tolist()
    # ρ = 7 spacing: σ^(1/7) is evenly spaced
    inv = np.array(ours.sigmas[:-1]) ** (1 / 7)
    np.testing.assert_allclose(np.diff(inv), np.diff(inv)[0], rtol=1e-5)


def test_sigma_to_t_inverts_sigma_at():
    ns = NoiseSchedule.stable_diffusion()
    t = np.array([0.0, 24.0, 500.0, 998.0, 999.0])
    np.testing.assert_allclose(ns.sigma_to_t(ns.sigma_at(t)), t, atol=1e-6)
    # between integers σ is interpolated linearly, t(σ) log-linearly (both as diffusers): close, not equal
    t = np.array([1.5, 500.25])
    np.testing.assert_allclose(ns.sigma_to_t(ns.sigma_at(t)), t, atol=0.05)
    assert torch.tensor(ns.sigma_at(999.0)).item() == pytest.approx(14.6146, abs=1e-3)
