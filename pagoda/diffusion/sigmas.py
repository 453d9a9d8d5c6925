"""Sigma schedules: Karras et al. (2022) and Align Your Steps (Sabour et al., NVIDIA 2024).

AYS ships as 11 noise levels optimised for a 10-step run of a given model family. Other step counts take
a log-linear interpolation of log σ over those 11 values (NVIDIA's how-to, ComfyUI's `loglinear_interp`),
and the final level is replaced by σ = 0 so that the last step lands on the clean sample.
"""

from __future__ import annotations

import numpy as np

# Published noise levels (NVIDIA's AYS how-to; same values as ComfyUI's AlignYourStepsScheduler).
AYS_NOISE_LEVELS: dict[str, tuple[float, ...]] = {
    "sd15": (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
             0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582),
    "sdxl": (14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582),
    "svd": (700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002),
}

# The same 10-step schedules as training timesteps, for discrete-time models (SD1.5 and SDXL).
AYS_TIMESTEPS: dict[str, tuple[int, ...]] = {
    "sd15": (999, 850, 736, 645, 545, 455, 343, 233, 124, 24),
    "sdxl": (999, 845, 730, 587, 443, 310, 193, 116, 53, 13),
}


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0) -> np.ndarray:
    """N levels evenly spaced in σ^(1/ρ) from σ_max down to σ_min (Karras et al. 2022, eq. 5); no final 0."""
    ramp = np.linspace(0, 1, num_steps)
    max_inv, min_inv = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def loglinear_interp(levels: np.ndarray, num_points: int) -> np.ndarray:
    """Resample a decreasing list of noise levels to `num_points`, linearly in log σ."""
    levels = np.asarray(levels, dtype=np.float64)
    xs = np.linspace(0, 1, len(levels))
    new_xs = np.linspace(0, 1, num_points)
    return np.exp(np.interp(new_xs, xs, np.log(levels[::-1])))[::-1].copy()


def ays_sigmas(model: str, num_steps: int) -> np.ndarray:
    """N + 1 AYS noise levels for `model` ("sd15", "sdxl", "svd"), the last one 0."""
    if model not in AYS_NOISE_LEVELS:
        raise ValueError(f"no Align Your Steps table for {model!r}; have {sorted(AYS_NOISE_LEVELS)}")
    levels = np.array(AYS_NOISE_LEVELS[model])
    if num_steps + 1 != len(levels):
        levels = loglinear_interp(levels, num_steps + 1)
    levels[-1] = 0.0
    return levels
