"""SwiGLU's gate, ``silu(gate) * up`` over a fused [gate | up] projection, in one pass (float32 inside).
Elementwise: batch-invariant."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from pagoda.kernels.triton import check_device


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < WIDTH
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + WIDTH + cols, mask=mask, other=0.0).to(tl.float32)
    g = gate.to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, g / (1.0 + tl.exp(-g)) * up, mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None, *, block: int = 1024) -> torch.Tensor:
    """x: [N, 2I] -> [N, I] (``out`` may be float32 for any input dtype)."""
    check_device(x)
    rows, width = x.shape[0], x.shape[1] // 2
    out = torch.empty((rows, width), dtype=x.dtype, device=x.device) if out is None else out
    if rows:
        assert x.stride(1) == 1 and out.stride(1) == 1
        _silu_and_mul_kernel[(rows, triton.cdiv(width, block))](x, out, x.stride(0), out.stride(0), WIDTH=width,
                                                                 BLOCK=block)
    return out


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.float().chunk(2, dim=-1)
    return F.silu(gate) * up
