"""Step-by-step agreement with diffusers' schedulers: ‖pagoda − diffusers‖ / ‖diffusers‖ ≤ 1e-5 at every step.

Both run their own trajectory from the same start with the same deterministic model, so errors would
accumulate; stochastic samplers get generators seeded alike and must consume the same noise draws.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusion_refs import SD_CONFIG, fake_model, rel_err

from pagoda.diffusion import DDIM, PagodaScheduler, Preset, UniPC, scheduler

TOL = 1e-5


def run_both(ours, theirs, x0: torch.Tensor, steps: int, theirs_scale=None, seed: int | None = None):
    """Run both schedulers; return the worst per-step relative error. `theirs_scale(σ)` maps our VP sample
    to theirs (for diffusers' σ-space Euler schedulers)."""
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    assert torch.allclose(ours.timesteps.double(), theirs.timesteps.double(), atol=1e-4), (
        ours.timesteps, theirs.timesteps)
    g_ours = torch.Generator().manual_seed(seed) if seed is not None else None
    g_theirs = torch.Generator().manual_seed(seed) if seed is not None else None
    scale = theirs_scale or (lambda i: 1.0)
    x_ours, x_theirs = x0.clone(), x0.clone() * scale(0)
    worst = 0.0
    for i, t in enumerate(theirs.timesteps):
        out_ours = fake_model(ours.scale_model_input(x_ours, t), t)
        out_theirs = fake_model(theirs.scale_model_input(x_theirs, t), t)
        kw = {"generator": g_theirs} if seed is not None else {}
        x_theirs = theirs.step(out_theirs, t, x_theirs, **kw).prev_sample
        x_ours = ours.step(out_ours, ours.timesteps[i], x_ours, generator=g_ours).prev_sample
        worst = max(worst, rel_err(x_ours * scale(i + 1), x_theirs))
    assert torch.isfinite(x_ours).all()
    return worst


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("order,variant", [(1, "bh2"), (2, "bh1"), (2, "bh2"), (3, "bh1"), (3, "bh2")])
@pytest.mark.parametrize("steps", [5, 8, 10, 20])
def test_unipc_trailing_matches_diffusers(latents, order, variant, steps, prediction_type):
    cfg = {**SD_CONFIG, "prediction_type": prediction_type}
    theirs = UniPCMultistepScheduler(**cfg, solver_order=order, solver_type=variant, timestep_spacing="trailing")
    ours = PagodaScheduler(Preset("t", UniPC(order=order, variant=variant), "trailing"), cfg)
    assert run_both(ours, theirs, latents, steps) <= TOL


def test_unipc_disable_corrector_and_no_lower_order_final(latents):
    theirs = UniPCMultistepScheduler(**SD_CONFIG, solver_order=3, timestep_spacing="trailing",
                                     disable_corrector=[1, 4], lower_order_final=True)
    ours = PagodaScheduler(Preset("t", UniPC(order=3, disable_corrector=(1, 4)), "trailing"), SD_CONFIG)
    assert run_both(ours, theirs, latents, 10) <= TOL
    # without the corrector at all the trajectory must differ (the corrector does something)
    plain = PagodaScheduler(Preset("t", UniPC(order=3, use_corrector=False), "trailing"), SD_CONFIG)
    assert run_both(plain, theirs, latents, 10) > 1e-3


def test_unipc_preset_is_diffusers_unipc_trailing(latents):
    theirs = UniPCMultistepScheduler(**SD_CONFIG, timestep_spacing="trailing")  # order 2, bh2 by default
    assert run_both(scheduler("UniPC Trailing", SD_CONFIG), theirs, latents, 10) <= TOL


@pytest.mark.parametrize("steps", [7, 10, 13])
def test_unipc_ays_matches_diffusers_unipc_on_the_ays_schedule(latents, steps):
    """diffusers' UniPC takes no custom schedule, so we hand it ours and compare the solver on it."""
    ours = scheduler("UniPC AYS", SD_CONFIG)
    ours.set_timesteps(steps)
    theirs = UniPCMultistepScheduler(**SD_CONFIG, timestep_spacing="trailing")

    class Pinned(UniPCMultistepScheduler):
        def set_timesteps(self, n, device=None, **kw):
            super().set_timesteps(n, device)
            self.sigmas = ours.sigmas.clone()
            self.timesteps = ours.timesteps.clone()

    theirs = Pinned(**SD_CONFIG)
    assert run_both(ours, theirs, latents, steps) <= TOL


@pytest.mark.parametrize("steps", [5, 10, 20, 50])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_trailing_eta0_matches_diffusers(latents, steps, prediction_type):
    cfg = {**SD_CONFIG, "prediction_type": prediction_type}
    theirs = DDIMScheduler(**cfg, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    assert run_both(scheduler("DDIM Trailing", cfg), theirs, latents, steps) <= TOL


def test_ddim_trailing_ignores_set_alpha_to_one_false(latents):
    """The preset wins over the config: the last step lands on σ = 0 (ᾱ = 1) anyway."""
    cfg = {**SD_CONFIG, "set_alpha_to_one": False}
    ours = scheduler("DDIM Trailing", cfg)
    ours.set_timesteps(10)
    assert ours.sigmas[-1] == 0.0
    theirs = DDIMScheduler(**SD_CONFIG, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
    assert run_both(ours, theirs, latents, 10) <= TOL


def test_ddim_trailing_where_diffusers_departs_from_the_formula():
    """diffusers' DDIM steps to t − T // N, not to the next trailing timestep: for N = 6 it goes 999 → 833
    while the schedule's next timestep is 832, and its last step ends at ᾱ_0 instead of ᾱ = 1. We follow the
    trailing formula (t_i = round(T − i·T/N) − 1, then σ = 0)."""
    ours = scheduler("DDIM Trailing", SD_CONFIG)
    ours.set_timesteps(6)
    assert ours.timesteps.tolist() == [999, 832, 666, 499, 332, 166]
    assert ours.sigmas[-1] == 0.0


@pytest.mark.parametrize("steps", [5, 10])
def test_ddim_eta1_matches_diffusers_with_same_noise(latents, steps):
    theirs = DDIMScheduler(**SD_CONFIG, timestep_spacing="trailing", clip_sample=False)
    ours = PagodaScheduler(Preset("t", DDIM(eta=1.0), "trailing"), SD_CONFIG)

    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    x1, x2 = latents.clone(), latents.clone()
    for t in theirs.timesteps:
        x2 = theirs.step(fake_model(x2, t), t, x2, eta=1.0, generator=g2).prev_sample
        x1 = ours.step(fake_model(x1, t), t, x1, generator=g1).prev_sample
        assert rel_err(x1, x2) <= TOL
    assert ours.step_index == steps


@pytest.mark.parametrize("steps", [7, 10, 25])
def test_dpmpp_2m_karras_matches_diffusers(latents, steps):
    theirs = DPMSolverMultistepScheduler(**SD_CONFIG, use_karras_sigmas=True, algorithm_type="dpmsolver++",
                                         solver_order=2)
    assert run_both(scheduler("DPM++ 2M Karras", SD_CONFIG), theirs, latents, steps) <= TOL


@pytest.mark.parametrize("steps", [5, 10, 30])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_euler_ancestral_matches_diffusers_with_same_noise(latents, steps, prediction_type):
    """diffusers' Euler A keeps σ-space samples; ours are VP-scaled, so compare x·sqrt(1 + σ²)."""
    cfg = {**SD_CONFIG, "prediction_type": prediction_type}
    ours = scheduler("Euler A", cfg)
    ours.set_timesteps(steps)
    sig = ours.schedule.sigmas
    theirs = EulerAncestralDiscreteScheduler(**cfg)
    worst = run_both(ours, theirs, latents, steps, theirs_scale=lambda i: math.sqrt(1 + sig[i] ** 2), seed=3)
    assert worst <= TOL


def test_drop_in_inside_a_diffusers_loop_returns_tuple_and_counts_steps(latents):
    s = scheduler("UniPC AYS", SD_CONFIG)
    s.set_timesteps(10)
    assert s.order == 1 and s.init_noise_sigma == 1.0 and len(s.timesteps) == 10
    x = latents
    for t in s.timesteps:
        (x,) = s.step(fake_model(s.scale_model_input(x, t), t), t, x, return_dict=False)
    assert s.step_index == 10 and torch.isfinite(x).all()
