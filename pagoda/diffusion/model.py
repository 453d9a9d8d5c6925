"""The model boundary of the diffusion engine: one batched forward per engine step.

A `DiffusionModel` is a discrete-time VP network (what diffusers' UNets are) plus the facts a sampler
needs about it: its training noise schedule and what it predicts. Contract of `forward(x, t, conds)`:
x is the VP-scaled batch (B, C, H, W), t the per-row model timesteps (B,) as floats, conds one
conditioning object per row (None for unconditional models); it returns the prediction for every row,
and row r depends on row r's inputs only, so requests at different steps can share the call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from pagoda.diffusion.noise_schedule import NoiseSchedule


class DiffusionModel(ABC):
    noise: NoiseSchedule
    prediction_type: str

    @abstractmethod
    def forward(self, x: torch.Tensor, t: torch.Tensor, conds: list[Any]) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor, t: torch.Tensor, conds: list[Any]) -> torch.Tensor:
        return self.forward(x, t, conds)


@dataclass(frozen=True)
class TextConditioning:
    """One request's text condition: prompt and negative-prompt embeddings, and its guidance scale."""

    embeds: torch.Tensor  # (L, D)
    negative_embeds: torch.Tensor  # (L, D)
    guidance_scale: float = 7.5


class UNetModel(DiffusionModel):
    """A diffusers UNet2DModel (conditions None, or class labels when it has `num_class_embeds`) or a
    UNet2DConditionModel (conditions TextConditioning).

    Classifier-free guidance runs the unconditional and conditional halves in the same forward, ordered
    as diffusers' Stable Diffusion pipeline orders them ([negatives; prompts]).
    """

    def __init__(self, unet: torch.nn.Module, noise: NoiseSchedule, prediction_type: str = "epsilon"):
        self.unet = unet
        self.noise = noise
        self.prediction_type = prediction_type
        self.conditional = hasattr(unet.config, "cross_attention_dim") and unet.config.cross_attention_dim
        # class-conditional UNet2DModel: conds are class ids; None means the last class (by our convention the
        # "any class" one learnt by label dropout, as in the digits model)
        self.num_classes = None if self.conditional else getattr(unet.config, "num_class_embeds", None)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, t: torch.Tensor, conds: list[Any]) -> torch.Tensor:
        dtype = next(self.unet.parameters()).dtype
        x, t = x.to(dtype), t.to(x.device)
        if self.num_classes:
            labels = torch.tensor([self.num_classes - 1 if c is None else int(c) for c in conds], device=x.device)
            return self.unet(x, t, class_labels=labels).sample.float()
        if not self.conditional:
            return self.unet(x, t).sample.float()
        scales = torch.tensor([c.guidance_scale for c in conds], device=x.device, dtype=torch.float32)
        embeds = torch.stack([c.embeds for c in conds]).to(x.device, dtype)
        if bool(torch.all(scales <= 1.0)):
            return self.unet(x, t, encoder_hidden_states=embeds).sample.float()
        negative = torch.stack([c.negative_embeds for c in conds]).to(x.device, dtype)
        out = self.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=torch.cat([negative, embeds]))
        uncond, cond = out.sample.float().chunk(2)
        scales = scales.view(-1, *([1] * (x.dim() - 1)))
        # rows with scale ≤ 1 take the plain conditional prediction (diffusers skips guidance there)
        guided = uncond + scales * (cond - uncond)
        return torch.where(scales > 1.0, guided, cond)
