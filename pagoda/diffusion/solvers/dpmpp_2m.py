"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2; k-diffusion `sample_dpmpp_2m`).

A multistep exponential integrator in data prediction, in λ = −log σ:

    h = λ_{i+1} − λ_i,  r = (λ_i − λ_{i−1}) / h
    D' = (1 + 1/(2r))·D_i − (1/(2r))·D_{i−1}
    x_{i+1} = (σ_{i+1}/σ_i)·x − expm1(−h)·D'

The first step (no history) is first order (DDIM), and so is a step to σ = 0, whose limit is x = D_i.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pagoda.diffusion.solvers.base import Solver


@dataclass(frozen=True)
class DPMSolverPP2M(Solver):
    name: str = "dpmpp_2m"

    def step(
        self,
        x: torch.Tensor,
        denoised: torch.Tensor,
        sigmas: Sequence[float],
        i: int,
        state: torch.Tensor | None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if sigma_next == 0.0:
            return denoised, denoised
        h = math.log(sigma / sigma_next)
        d = denoised
        if state is not None:
            r = math.log(sigmas[i - 1] / sigma) / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * state
        return (sigma_next / sigma) * x - math.expm1(-h) * d, denoised
