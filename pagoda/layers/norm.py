"""RMSNorm with the residual add fused in (one pass instead of two)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagoda.kernels import cpu_kernels


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Without ``residual``: norm(x). With it: (norm(x + residual), x + residual), computed in
        place: ``x`` and ``residual`` are overwritten (callers pass tensors they own)."""
        if residual is None:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused kernel, fp32 inside
        if x.dim() == 2 and x.is_cuda:  # Triton: one pass, batch-invariant
            from pagoda.kernels.triton.add_rms_norm import add_rms_norm_

            return add_rms_norm_(x, residual, self.weight, self.eps)
        if x.dim() == 2 and cpu_kernels.use_for(x):
            torch.ops.pagoda.fused_add_rms_norm_(x, residual, self.weight, self.eps)
            return x, residual
        residual = x + residual
        return F.rms_norm(residual, self.weight.shape, self.weight, self.eps), residual


class FinalRMSNorm(RMSNorm):
    """The model's last norm: the residual sum rounded to the model dtype as every layer's is,
    then normalised in float32 and kept in float32 for the LM head (no rounding to bfloat16
    between the last layer and the logits)."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is not None:
            residual = x + residual
            x = residual
        out = F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps)
        return out if residual is None else (out, residual)
