"""Timestep spacings: which N of the T training timesteps a sampler visits, in decreasing order.

Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2) name three:
*leading* starts at 0 and steps up, so it never reaches the noisiest timestep; *linspace* spreads N points
evenly over [0, T−1]; *trailing* steps down from T and so always starts at t = T − 1 (the noise the model
was trained to remove first): t_i = round(T − i·T/N) − 1, e.g. 999, 899, …, 99 for N = 10.
"""

from __future__ import annotations

import numpy as np

SPACINGS = ("leading", "linspace", "trailing")


def timesteps(spacing: str, num_steps: int, num_train_timesteps: int = 1000, steps_offset: int = 0) -> np.ndarray:
    """N timesteps, decreasing. `linspace` is fractional (diffusers' Euler schedulers); the others integral."""
    if num_steps < 1 or num_steps > num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    T, N = num_train_timesteps, num_steps
    if spacing == "leading":
        return (np.arange(N) * (T // N))[::-1].astype(np.float64) + steps_offset
    if spacing == "linspace":
        return np.linspace(0, T - 1, N)[::-1].copy()
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / N)).astype(np.float64) - 1
    raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
