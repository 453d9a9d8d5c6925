"""The diffusion engine: continuous batching applied to diffusion sampling.

Every running request is a trajectory with its own schedule, solver, step count, position and seed.
One `step()` gathers the next model evaluation of every running request into a single batched forward,
turns each row into a denoised estimate with the prediction adapter, and advances each request with its
own solver step. Requests join whenever there is room and leave when their schedule ends, so a 4-step
"DDIM Trailing" request and a 20-step "Euler A" request share forwards while both run.

Per-request randomness comes from a `torch.Generator` seeded with the request's seed, used first for the
initial noise and then for the solver's draws, so a request's result does not depend on its neighbours.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from pagoda.diffusion.model import DiffusionModel
from pagoda.diffusion.prediction import to_denoised
from pagoda.diffusion.presets import Preset, get_preset
from pagoda.diffusion.schedule import Schedule


@dataclass(frozen=True)
class ImageRequest:
    request_id: str
    shape: tuple[int, ...]  # one sample's shape, e.g. latent (4, 64, 64)
    sampler: str | Preset = "UniPC AYS"
    num_steps: int = 10
    seed: int = 0
    cond: Any = None  # passed through to the model, one per request


@dataclass
class _Trajectory:
    request: ImageRequest
    preset: Preset
    schedule: Schedule
    x: torch.Tensor  # σ-space sample, shape (1, *shape)
    state: Any
    generator: torch.Generator
    i: int = 0


@dataclass
class EngineStats:
    forwards: int = 0
    rows: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class DiffusionEngine:
    def __init__(self, model: DiffusionModel, max_batch_size: int = 16, device: str | torch.device = "cpu"):
        self.model = model
        self.max_batch_size = max_batch_size
        self.device = torch.device(device)
        self.waiting: deque[ImageRequest] = deque()
        self.running: list[_Trajectory] = []
        self.stats = EngineStats()

    def check_request(self, request: ImageRequest) -> None:
        """Raises on a bad sampler name or step count (what ``add_request`` would refuse)."""
        get_preset(request.sampler).schedule(self.model.noise, request.num_steps)

    def add_request(self, request: ImageRequest) -> None:
        self.check_request(request)  # fail early
        self.waiting.append(request)

    def abort_all(self) -> None:
        """Drops every waiting and running request (after a failed step)."""
        self.waiting.clear()
        self.running = []

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def _start(self, request: ImageRequest) -> _Trajectory:
        preset = get_preset(request.sampler)
        schedule = preset.schedule(self.model.noise, request.num_steps)
        generator = torch.Generator(device="cpu").manual_seed(request.seed)
        noise = torch.randn((1, *request.shape), generator=generator, dtype=torch.float32)
        # VP noise at σ_0 seen in σ-space: x = sqrt(1 + σ_0²)·ε
        x = (noise * math.sqrt(1 + schedule.sigmas[0] ** 2)).to(self.device)
        return _Trajectory(request, preset, schedule, x, preset.solver.init_state(), generator)

    def step(self) -> dict[str, torch.Tensor]:
        """One batched model forward for all running requests; returns the requests that finished."""
        while self.waiting and len(self.running) < self.max_batch_size:
            self.running.append(self._start(self.waiting.popleft()))
        if not self.running:
            return {}
        batch = self.running
        sigmas = torch.tensor([tr.schedule.sigmas[tr.i] for tr in batch], dtype=torch.float32, device=self.device)
        sig = sigmas.view(-1, *([1] * (batch[0].x.dim() - 1)))
        x = torch.cat([tr.x for tr in batch])
        t = torch.tensor([tr.schedule.timesteps[tr.i] for tr in batch], dtype=torch.float32, device=self.device)
        out = self.model(x / torch.sqrt(1 + sig**2), t, [tr.request.cond for tr in batch])
        denoised = to_denoised(out.float(), x, sig, self.model.prediction_type)
        self.stats.forwards += 1
        self.stats.rows += len(batch)
        self.stats.batch_sizes.append(len(batch))

        finished: dict[str, torch.Tensor] = {}
        for row, tr in enumerate(batch):
            tr.x, tr.state = tr.preset.solver.step(
                tr.x, denoised[row : row + 1], tr.schedule.sigmas, tr.i, tr.state, tr.generator)
            tr.i += 1
            if tr.i == tr.schedule.num_steps:
                finished[tr.request.request_id] = tr.x[0]
        self.running = [tr for tr in batch if tr.i < tr.schedule.num_steps]
        return finished

    def generate(self, requests: list[ImageRequest]) -> dict[str, torch.Tensor]:
        """Run the requests to completion (batched) and return request id -> final sample."""
        for r in requests:
            self.add_request(r)
        results: dict[str, torch.Tensor] = {}
        while self.has_unfinished():
            results.update(self.step())
        return results
