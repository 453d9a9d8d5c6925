"""Prediction adapters: what a VP model's output means, turned into the denoiser D(x, σ) ≈ x0.

Solvers see σ-space samples x = x0 + σ·ε. A VP model is fed x·α with α = 1/sqrt(1 + σ²) (so that its
input is sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε) and predicts one of

    epsilon  ε̂           → D = x − σ·ε̂
    v        v̂ = α_t ε − σ_t x0 (Salimans & Ho 2022, with α_t = α, σ_t = σ·α)
                         → D = α²·x − σ·α·v̂
    sample   x̂0          → D = x̂0

`sigma` may be a float or a tensor broadcastable to x (one level per batch row).
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _alpha(sigma: torch.Tensor | float) -> torch.Tensor | float:
    return (1 + sigma * sigma) ** -0.5


def model_input(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The VP-scaled sample the model expects at noise level σ."""
    return x * _alpha(sigma)


def to_denoised(
    model_output: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor | float, prediction_type: str
) -> torch.Tensor:
    """D(x, σ) from the model's output at `model_input(x, σ)`."""
    if prediction_type == "epsilon":
        return x - sigma * model_output
    if prediction_type == "v_prediction":
        alpha = _alpha(sigma)
        return (alpha * alpha) * x - (sigma * alpha) * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
