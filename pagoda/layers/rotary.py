"""Rotary position embedding (GPT-NeoX / Hugging Face "rotate half" layout), with llama3 scaling."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from pagoda.config import RopeScaling
from pagoda.kernels import cpu_kernels


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the band between blended
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


class RotaryEmbedding(nn.Module):
    """Rotates q and k of flattened tokens by their absolute positions."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: RopeScaling | None) -> None:
        super().__init__()
        self.head_dim = head_dim
        inv_freq = rope_inverse_frequencies(head_dim, theta, scaling)
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        # [max_positions, head_dim] as cos|cos and sin|sin, computed once in float32
        self.register_buffer("cos", torch.cat([freqs.cos(), freqs.cos()], dim=-1), persistent=False)
        self.register_buffer("sin", torch.cat([freqs.sin(), freqs.sin()], dim=-1), persistent=False)

    @property
    def cos_table(self) -> torch.Tensor:
        return self.get_buffer("cos")

    @property
    def sin_table(self) -> torch.Tensor:
        return self.get_buffer("sin")

    def step(self, positions: torch.Tensor, dtype: torch.dtype) -> RopeStep:
        """The rotation for this step's positions (every layer uses the same)."""
        return RopeStep(positions, self.cos_table, self.sin_table, dtype)

    @staticmethod
    def rotate(q: torch.Tensor, k: torch.Tensor, step: RopeStep) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, Hq, D], k: [T, Hkv, D] -> rotated (in place by the CPU kernel, else copies)."""
        if q.is_cuda:  # Triton, in place
            from pagoda.kernels.triton.rotary import rotary_embedding_

            return rotary_embedding_(step.positions, q, k, step.cos_table, step.sin_table)
        if cpu_kernels.use_for(q):
            torch.ops.pagoda.rotary_embedding_(step.positions, q, k, step.cos_table, step.sin_table)
            return q, k
        cos, sin = step.cos_sin
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


@dataclass
class RopeStep:
    positions: torch.Tensor  # [T] int64
    cos_table: torch.Tensor  # [max_positions, D] float32
    sin_table: torch.Tensor
    dtype: torch.dtype

    @functools.cached_property
    def cos_sin(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[T, 1, D] cos and sin in the activation dtype, gathered once per step for the portable path."""
        return (self.cos_table[self.positions].unsqueeze(1).to(self.dtype),
                self.sin_table[self.positions].unsqueeze(1).to(self.dtype))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)
