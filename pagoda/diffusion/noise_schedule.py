"""The training noise schedule of a discrete-time (VP) diffusion model.

A VP model sees x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε for integer t in [0, T). Pagoda's solvers work in
σ-space (k-diffusion's convention), x = x0 + σ·ε with σ_t = sqrt((1 − ᾱ_t) / ᾱ_t), so the schedule's job is
to convert between a model timestep t and its noise level σ. Betas are built in float32 exactly as diffusers
builds them, so that σ values agree with diffusers' schedulers to the last bit that matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def make_betas(
    beta_schedule: str = "scaled_linear",
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
    trained_betas: list[float] | None = None,
) -> torch.Tensor:
    """Betas as float32, the way the model was trained ("linear" is DDPM's, "scaled_linear" Stable Diffusion's)."""
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        # linear in sqrt(beta): Stable Diffusion's schedule
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    raise ValueError(f"unsupported beta_schedule {beta_schedule!r} (use 'linear' or 'scaled_linear')")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(ᾱ) so that the last timestep has zero SNR (Lin et al. 2023, Algorithm 1)."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


@dataclass(frozen=True)
class NoiseSchedule:
    """ᾱ_t for t = 0..T−1 (float64 copy of the float32 training values) and σ conversions."""

    alphas_cumprod: np.ndarray

    @classmethod
    def from_betas(cls, betas: torch.Tensor, zero_terminal_snr: bool = False) -> NoiseSchedule:
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if zero_terminal_snr:
            # ᾱ_T = 0 would make σ_T infinite; diffusers uses the same tiny stand-in
            alphas_cumprod[-1] = 2**-24
        return cls(alphas_cumprod.double().numpy())

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """Read a diffusers scheduler config (any VP scheduler's keys)."""
        betas = make_betas(
            config.get("beta_schedule", "linear"),
            config.get("beta_start", 0.0001),
            config.get("beta_end", 0.02),
            config.get("num_train_timesteps", 1000),
            config.get("trained_betas"),
        )
        return cls.from_betas(betas, bool(config.get("rescale_betas_zero_snr", False)))

    @classmethod
    def stable_diffusion(cls) -> NoiseSchedule:
        """Stable Diffusion 1.x / 2.x / XL: scaled-linear betas 0.00085 → 0.012 over 1000 steps."""
        return cls.from_betas(make_betas("scaled_linear", 0.00085, 0.012, 1000))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def sigmas(self) -> np.ndarray:
        """σ_t for every training timestep, increasing with t."""
        # computed in float32 like diffusers, then widened
        ac = self.alphas_cumprod.astype(np.float32)
        return (((1 - ac) / ac) ** 0.5).astype(np.float64)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_at(self, t: np.ndarray | float) -> np.ndarray:
        """σ at (possibly fractional) timesteps, interpolating σ linearly in t as diffusers does."""
        return np.interp(np.asarray(t, dtype=np.float64), np.arange(self.num_train_timesteps), self.sigmas)

    def sigma_to_t(self, sigma: np.ndarray | float) -> np.ndarray:
        """The fractional timestep whose σ is `sigma`, interpolating log σ (diffusers' `_sigma_to_t`)."""
        sigma = np.asarray(sigma, dtype=np.float64)
        log_sigmas = np.log(self.sigmas)
        log_sigma = np.log(np.maximum(sigma, 1e-10)).reshape(-1)
        idx = np.clip(np.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, len(log_sigmas) - 2)
        low, high = log_sigmas[idx], log_sigmas[idx + 1]
        w = np.clip((low - log_sigma) / (low - high), 0.0, 1.0)
        return ((1 - w) * idx + w * (idx + 1)).reshape(sigma.shape)
