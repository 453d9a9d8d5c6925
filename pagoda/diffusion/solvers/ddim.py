"""DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12) in σ-space.

Written for x = x0 + σ·ε the DDIM update is

    x_{i+1} = D + σ_down · (x − D) / σ_i + σ_up · z,
    σ_up = η · sqrt(σ_{i+1}² (σ_i² − σ_{i+1}²) / σ_i²),  σ_down = sqrt(σ_{i+1}² − σ_up²)

(divide diffusers' VP form by sqrt(ᾱ_prev) to see it). With η = 0 this is exactly one Euler step of the
probability-flow ODE dx/dσ = (x − D)/σ; with η = 1 it is k-diffusion's Euler ancestral step. So `Euler`
and `EulerAncestral` (euler.py) are this solver under the names users know them by.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pagoda.diffusion.solvers.base import Solver, randn_like


def ancestral_split(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(σ_down, σ_up): the deterministic target level and the fresh-noise level of an η-ancestral step."""
    if sigma_next == 0.0 or eta == 0.0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


@dataclass(frozen=True)
class DDIM(Solver):
    eta: float = 0.0
    name: str = "ddim"

    def step(
        self,
        x: torch.Tensor,
        denoised: torch.Tensor,
        sigmas: Sequence[float],
        i: int,
        state: Any,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, Any]:
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, self.eta)
        x_next = denoised + (sigma_down / sigma) * (x - denoised)
        if self.eta > 0:
            # drawn even when σ_up = 0 so the generator advances exactly as diffusers' does
            x_next = x_next + sigma_up * randn_like(x, generator)
        return x_next, state
