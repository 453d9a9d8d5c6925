"""Fused residual add + RMSNorm: ``residual <- x + residual``; ``out <- rms_norm(residual) * weight``.

One program per row; the sum of squares is one ``tl.sum`` over the whole row (the row's width fixes the
tree), so a row's result does not depend on the batch: batch-invariant. The sum is rounded to the
activation dtype before it is normalised, as the unfused ``x + residual`` followed by a norm does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.triton import check_device


@triton.jit
def _add_rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, eps,
                         stride_x, stride_r, stride_o, HIDDEN: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < HIDDEN
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    r = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0)
    s = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
    tl.store(residual_ptr + row * stride_r + cols, s, mask=mask)
    sf = s.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(sf * sf, 0) / HIDDEN + eps)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, sf * rstd * w, mask=mask)


def add_rms_norm_(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                  out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual: [N, H] (rows contiguous). Overwrites ``residual`` with the sum and ``out`` (default:
    ``x``) with the normalised sum; returns (out, residual)."""
    check_device(x)
    out = x if out is None else out
    rows, hidden = x.shape
    if rows:
        assert x.stride(1) == 1 and residual.stride(1) == 1 and out.stride(1) == 1
        _add_rms_norm_kernel[(rows,)](x, residual, weight, out, eps, x.stride(0), residual.stride(0),
                                      out.stride(0), HIDDEN=hidden, BLOCK_H=triton.next_power_of_2(hidden))
    return out, residual


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 normalised sum, sum in the input dtype)."""
    s = x + residual
    sf = s.float()
    return sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps) * weight.float(), s
