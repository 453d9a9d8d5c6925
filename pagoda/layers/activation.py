"""SwiGLU's gate: silu(gate) * up over a fused [gate | up] projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagoda.kernels import cpu_kernels


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.is_cuda:
            from pagoda.kernels.triton.silu_and_mul import silu_and_mul

            return silu_and_mul(x)
        if x.dim() == 2 and cpu_kernels.use_for(x):
            return torch.ops.pagoda.silu_and_mul(x)  # one pass, no gate/up temporaries
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
