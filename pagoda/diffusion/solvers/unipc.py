"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework", Algorithms 1–3).

Multistep data-prediction solver in λ = −log σ. Each step first *corrects* the sample the previous step
produced (UniC: it reuses the model evaluation just made at that sample, so it costs no extra forward),
then *predicts* the next one (UniP) from the last `order` denoised values. With h = λ_{i+1} − λ_i,
r_k = (λ_{i−k} − λ_i)/h and D_k = (D_{i−k} − D_i)/r_k:

    x_{i+1} = (σ_{i+1}/σ_i)·x_i − expm1(−h)·D_i − B(h)·Σ_k ρ_k·D_k

where B(h) = −h ("bh1") or expm1(−h) ("bh2") and the ρ solve the order conditions R ρ = b (paper eq. 8;
ρ = ½ for order 2's predictor and order 1's corrector). Warm-up uses order min(order, i + 1); with
`lower_order_final` the last steps drop to min(order, N − i) (diffusers' rule). A step to σ = 0 returns its
limit, the denoised value. `disable_corrector` lists the steps whose predictor output is left uncorrected
(diffusers' convention). Verified step by step against diffusers' UniPCMultistepScheduler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pagoda.diffusion.solvers.base import Solver


@dataclass(frozen=True)
class UniPCState:
    history: tuple[torch.Tensor, ...] = ()  # denoised values at steps i − len + 1 .. i, newest last
    last_x: torch.Tensor | None = None  # the (corrected) sample the last predictor started from
    last_order: int = 0  # the order that predictor used


def _coefficients(sigmas: Sequence[float], s0: int, t: int, order: int, variant: str):
    """(σ_t/σ_s0, expm1(−h), B(h), rks, b) for a step from index s0 to index t using `order` points."""
    lam = [-math.log(sigmas[s0 - k]) for k in range(order)]  # λ at s0, s0−1, …
    h = -math.log(sigmas[t]) - lam[0]
    hh = -h
    h_phi_1 = math.expm1(hh)
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"unknown UniPC variant {variant!r} (use 'bh1' or 'bh2')")
    rks = [(lam[k] - lam[0]) / h for k in range(1, order)] + [1.0]
    b = []
    h_phi_k, factorial = h_phi_1 / hh - 1, 1
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R = np.array([[r ** (k - 1) for r in rks] for k in range(1, order + 1)], dtype=np.float64)
    return sigmas[t] / sigmas[s0], h_phi_1, b_h, rks, R, np.array(b)


@dataclass(frozen=True)
class UniPC(Solver):
    order: int = 2
    variant: str = "bh2"
    use_corrector: bool = True
    disable_corrector: tuple[int, ...] = ()
    lower_order_final: bool = True
    name: str = "unipc"

    def __post_init__(self) -> None:
        if self.order not in (1, 2, 3):
            raise ValueError("UniPC order must be 1, 2 or 3")

    def init_state(self) -> UniPCState:
        return UniPCState()

    def step(
        self,
        x: torch.Tensor,
        denoised: torch.Tensor,
        sigmas: Sequence[float],
        i: int,
        state: UniPCState,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, UniPCState]:
        if self.use_corrector and i > 0 and state.last_x is not None and (i - 1) not in self.disable_corrector:
            x = self._correct(state, x, denoised, sigmas, i)
        history = (state.history + (denoised,))[-self.order :]
        order = min(self.order, len(history))
        if self.lower_order_final:
            order = min(order, len(sigmas) - 1 - i)
        x_next = self._predict(x, history, sigmas, i, order)
        return x_next, UniPCState(history, x, order)

    def _predict(self, x, history, sigmas, i, order) -> torch.Tensor:
        m0 = history[-1]
        if sigmas[i + 1] == 0.0:
            return m0
        ratio, h_phi_1, b_h, rks, R, b = _coefficients(sigmas, i, i + 1, order, self.variant)
        x_next = ratio * x - h_phi_1 * m0
        if order >= 2:
            rhos = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
            res = sum(rho * (history[-(k + 2)] - m0) / rks[k] for k, rho in enumerate(rhos))
            x_next = x_next - b_h * res
        return x_next

    def _correct(self, state: UniPCState, x, model_t, sigmas, i) -> torch.Tensor:
        order = state.last_order
        m0 = state.history[-1]
        ratio, h_phi_1, b_h, rks, R, b = _coefficients(sigmas, i - 1, i, order, self.variant)
        rhos = [0.5] if order == 1 else np.linalg.solve(R, b).tolist()
        res = rhos[-1] * (model_t - m0)
        for k, rho in enumerate(rhos[:-1]):
            res = res + rho * (state.history[-(k + 2)] - m0) / rks[k]
        return ratio * state.last_x - h_phi_1 * m0 - b_h * res
