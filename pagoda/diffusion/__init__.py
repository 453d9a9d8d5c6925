"""Diffusion sampling: schedules as pure functions, solvers as step functions, presets, an engine.

    from pagoda.diffusion import scheduler
    pipe.scheduler = scheduler("UniPC AYS", pipe.scheduler.config)   # inside any diffusers pipeline
"""

from pagoda.diffusion.noise_schedule import NoiseSchedule, make_betas, rescale_zero_terminal_snr
from pagoda.diffusion.prediction import model_input, to_denoised
from pagoda.diffusion.presets import PRESETS, Preset, get_preset
from pagoda.diffusion.schedule import Schedule, make_schedule
from pagoda.diffusion.scheduler import PagodaScheduler, scheduler
from pagoda.diffusion.sigmas import (
    AYS_NOISE_LEVELS,
    AYS_TIMESTEPS,
    ays_sigmas,
    karras_sigmas,
    loglinear_interp,
)
from pagoda.diffusion.solvers import DDIM, DPMSolverPP2M, Euler, EulerAncestral, Solver, UniPC
from pagoda.diffusion.spacing import timesteps

__all__ = [
    "AYS_NOISE_LEVELS", "AYS_TIMESTEPS", "DDIM", "DPMSolverPP2M", "Euler", "EulerAncestral", "NoiseSchedule",
    "PRESETS", "PagodaScheduler", "Preset", "Schedule", "Solver", "UniPC", "ays_sigmas", "get_preset",
    "karras_sigmas", "loglinear_interp", "make_betas", "make_schedule", "model_input", "rescale_zero_terminal_snr",
    "scheduler", "timesteps", "to_denoised",
]
