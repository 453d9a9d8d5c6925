"""A sampling schedule: the N + 1 noise levels a run visits and the N model timesteps that go with them.

Solvers read only `sigmas` (σ_0 > σ_1 > … > σ_N, normally σ_N = 0); the model is conditioned on
`timesteps[i]` while at σ_i. The two are kept apart because some schedules pick σ first and round the
timestep the model sees (Karras in diffusers), and others pick timesteps first (trailing, AYS at 10 steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pagoda.diffusion.noise_schedule import NoiseSchedule
from pagoda.diffusion.sigmas import AYS_TIMESTEPS, ays_sigmas, karras_sigmas
from pagoda.diffusion.spacing import timesteps as spaced_timesteps

SCHEDULE_KINDS = ("trailing", "linspace", "leading", "karras", "ays")


@dataclass(frozen=True)
class Schedule:
    sigmas: tuple[float, ...]  # N + 1 noise levels, decreasing
    timesteps: tuple[float, ...]  # N model timesteps

    def __post_init__(self) -> None:
        if len(self.sigmas) != len(self.timesteps) + 1:
            raise ValueError("a schedule has one more sigma than timesteps")

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @classmethod
    def from_timesteps(cls, noise: NoiseSchedule, timesteps: np.ndarray, final_sigma: float = 0.0) -> Schedule:
        """σ_i = σ(t_i) from the training schedule, then one last step to `final_sigma`."""
        sigmas = noise.sigma_at(timesteps).astype(np.float32).astype(np.float64)
        return cls(tuple(float(s) for s in sigmas) + (final_sigma,), tuple(float(t) for t in timesteps))

    @classmethod
    def from_sigmas(cls, noise: NoiseSchedule, sigmas: np.ndarray, round_timesteps: bool = False) -> Schedule:
        """Given N + 1 levels, condition the model on t(σ_i) (fractional unless `round_timesteps`)."""
        ts = noise.sigma_to_t(np.asarray(sigmas[:-1], dtype=np.float64))
        if round_timesteps:
            ts = np.round(ts)
        sig = np.asarray(sigmas, dtype=np.float32).astype(np.float64)
        return cls(tuple(float(s) for s in sig), tuple(float(t) for t in ts))


def make_schedule(kind: str, noise: NoiseSchedule, num_steps: int, ays_model: str = "sd15") -> Schedule:
    """Build the schedule of one named kind (see SCHEDULE_KINDS) for `num_steps` steps, ending at σ = 0."""
    T = noise.num_train_timesteps
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {num_steps}")
    if kind in ("trailing", "linspace", "leading"):
        return Schedule.from_timesteps(noise, spaced_timesteps(kind, num_steps, T))
    if kind == "karras":
        # diffusers conditions the model on the rounded timestep but steps with the exact Karras σ
        sig = karras_sigmas(noise.sigma_min, noise.sigma_max, num_steps)
        return Schedule.from_sigmas(noise, np.append(sig, 0.0), round_timesteps=True)
    if kind == "ays":
        if num_steps == 10 and ays_model in AYS_TIMESTEPS and T == 1000:
            # the published 10-step schedule is given in timesteps for discrete-time models
            return Schedule.from_timesteps(noise, np.array(AYS_TIMESTEPS[ays_model], dtype=np.float64))
        return Schedule.from_sigmas(noise, ays_sigmas(ays_model, num_steps))
    raise ValueError(f"unknown schedule kind {kind!r}; expected one of {SCHEDULE_KINDS}")
