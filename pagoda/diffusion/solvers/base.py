"""The solver contract: one step of a sampler as a function, the loop owned by the caller.

All solvers work in σ-space (k-diffusion's convention): the sample is x = x0 + σ·ε and the model has
already been turned into a denoiser D(x, σ) ≈ x0 by a prediction adapter. A caller runs

    state = solver.init_state()
    for i in range(schedule.num_steps):
        denoised = D(x, sigmas[i])
        x, state = solver.step(x, denoised, sigmas, i, state, generator)

Contract:
- `sigmas` is the whole schedule (N + 1 decreasing levels); step i moves x from σ_i to σ_{i+1}.
- `state` belongs to one trajectory; `step` never mutates it and returns the next one, so requests at
  different steps, with different solvers, can share one batched model forward.
- Stochastic solvers draw their noise with `torch.randn(x.shape, generator=generator)`, one draw per
  step (also at the last step), the same draws diffusers' schedulers make.
- Coefficients are computed in float64 Python floats; tensors keep the caller's dtype.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch


class Solver(ABC):
    """A sampler step function (see the module docstring for the contract)."""

    name: str = "solver"

    def init_state(self) -> Any:
        """The state before step 0 (None for single-step solvers)."""
        return None

    @abstractmethod
    def step(
        self,
        x: torch.Tensor,
        denoised: torch.Tensor,
        sigmas: Sequence[float],
        i: int,
        state: Any,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, Any]:
        """Advance x from sigmas[i] to sigmas[i + 1] given the denoiser's output at (x, sigmas[i])."""


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise of x's shape drawn from `generator` on the generator's device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
