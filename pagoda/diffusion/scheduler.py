"""A drop-in for diffusers schedulers: `pipe.scheduler = pagoda.diffusion.scheduler("UniPC AYS", pipe.scheduler.config)`.

It speaks the protocol diffusers pipelines use (`set_timesteps`, `timesteps`, `order`, `init_noise_sigma`,
`scale_model_input`, `step(...).prev_sample`, `add_noise`, `config`) and runs Pagoda's own schedule and
solver underneath. The noise schedule (betas, zero-terminal-SNR) and prediction type come from the given
config; everything about the sampler comes from the preset, which wins over the config (e.g. "DDIM
Trailing" always ends at ᾱ = 1, whatever `set_alpha_to_one` says).

Samples are VP-scaled, as for diffusers' DDIM/DPM/UniPC schedulers, so `init_noise_sigma` is 1 and
`scale_model_input` is the identity for every preset; internally each step moves to σ-space and back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pagoda.diffusion.noise_schedule import NoiseSchedule
from pagoda.diffusion.prediction import to_denoised
from pagoda.diffusion.presets import Preset, get_preset
from pagoda.diffusion.schedule import Schedule


@dataclass
class SchedulerOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class _Config(dict):
    """A dict that also reads as attributes, like diffusers' FrozenDict."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


class PagodaScheduler:
    order = 1  # one model evaluation per step for every preset
    init_noise_sigma = 1.0

    def __init__(self, preset: Preset, config: Mapping[str, Any]):
        self.preset = preset
        self.config = _Config(dict(config))
        self.noise = NoiseSchedule.from_config(config)
        self.prediction_type = config.get("prediction_type", "epsilon")
        self.schedule: Schedule | None = None
        self.timesteps: torch.Tensor = torch.tensor([])
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._state: Any = None

    # --- diffusers protocol -------------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None, **_: Any) -> None:
        self.schedule = self.preset.schedule(self.noise, num_inference_steps)
        ts = torch.tensor(self.schedule.timesteps, dtype=torch.float64)
        integral = bool(torch.all(ts == ts.round()))
        self.timesteps = (ts.long() if integral else ts.float()).to(device)
        self.sigmas = torch.tensor(self.schedule.sigmas, dtype=torch.float32)
        self.num_inference_steps = num_inference_steps
        self._step_index, self._begin_index = None, None
        self._state = self.preset.solver.init_state()

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        **_: Any,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        if self.schedule is None:
            raise ValueError("call set_timesteps before step")
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self._index_for(timestep)
        i, sigmas = self._step_index, self.schedule.sigmas
        x = sample * math.sqrt(1 + sigmas[i] ** 2)
        denoised = to_denoised(model_output, x, sigmas[i], self.prediction_type)
        x_next, self._state = self.preset.solver.step(x, denoised, sigmas, i, self._state, generator)
        prev_sample = (x_next / math.sqrt(1 + sigmas[i + 1] ** 2)).to(sample.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """q(x_t | x0) at (possibly fractional) training timesteps, VP-scaled."""
        sig = torch.tensor(self.noise.sigma_at(timesteps.detach().cpu().double().numpy()), dtype=original.dtype)
        sig = sig.reshape(-1, *([1] * (original.dim() - 1))).to(original.device)
        return (original + sig * noise) / torch.sqrt(1 + sig**2)

    def __len__(self) -> int:
        return self.noise.num_train_timesteps

    def _index_for(self, timestep: int | float | torch.Tensor) -> int:
        if self.schedule is None:
            raise ValueError("call set_timesteps before step")
        t = float(timestep)
        for k, s in enumerate(self.schedule.timesteps):
            if abs(s - t) < 1e-3:
                return k
        raise ValueError(f"timestep {t} is not in this schedule")


def scheduler(preset: str | Preset, config: Mapping[str, Any]) -> PagodaScheduler:
    """A diffusers-compatible scheduler running `preset`, on the noise schedule of a diffusers `config`."""
    return PagodaScheduler(get_preset(preset), config)
