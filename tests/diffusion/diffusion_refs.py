"""Shared references for the diffusion tests: diffusers configs and a deterministic stand-in model."""

from __future__ import annotations

import math

import torch

SD_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


def fake_model(x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """A smooth deterministic 'network': depends on the input and the timestep, O(1) outputs."""
    t = float(t)
    return 0.8 * x * math.cos(t / 700) + 0.4 * torch.sin(1.7 * x + t / 300) + 0.05 * x.flip(-1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())
