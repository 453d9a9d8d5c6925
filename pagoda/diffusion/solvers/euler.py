"""Euler and Euler ancestral (Karras et al. 2022, Algorithm 1; k-diffusion `sample_euler{,_ancestral}`).

In σ-space these coincide with DDIM at η = 0 and η = 1 (see ddim.py), so they share its step.
"""

from __future__ import annotations

from dataclasses import dataclass

from pagoda.diffusion.solvers.ddim import DDIM


@dataclass(frozen=True)
class Euler(DDIM):
    """One Euler step of the probability-flow ODE dx/dσ = (x − D(x, σ)) / σ."""

    eta: float = 0.0
    name: str = "euler"

    def __post_init__(self) -> None:
        if self.eta != 0.0:
            raise ValueError("Euler is deterministic; use EulerAncestral for η > 0")


@dataclass(frozen=True)
class EulerAncestral(DDIM):
    """Euler step down to σ_down, then fresh noise of level σ_up (η = 1 by default)."""

    eta: float = 1.0
    name: str = "euler_ancestral"
