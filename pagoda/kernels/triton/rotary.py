"""Rotary position embedding in place (GPT-NeoX / Hugging Face "rotate half" layout).

Reads the model's float32 cos|cos and sin|sin tables ([max_positions, D], built once by
``pagoda.layers.rotary.RotaryEmbedding``, so llama3 and linear scaling come with the table), one program
per token rotating all its query and key heads. Elementwise: batch-invariant.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.triton import check_device


@triton.jit
def _rotate(x_ptr, t, stride_t, stride_h, cos, sin,
            NUM_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, HALF: tl.constexpr, HALF_PAD: tl.constexpr):
    h = tl.arange(0, HEADS_PAD)
    c = tl.arange(0, HALF_PAD)
    mask = (h < NUM_HEADS)[:, None] & (c < HALF)[None, :]
    first = x_ptr + t * stride_t + h[:, None] * stride_h + c[None, :]
    x1 = tl.load(first, mask=mask, other=0.0)
    x2 = tl.load(first + HALF, mask=mask, other=0.0)
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    tl.store(first, (x1f * cos - x2f * sin).to(x1.dtype), mask=mask)
    tl.store(first + HALF, (x2f * cos + x1f * sin).to(x1.dtype), mask=mask)


@triton.jit
def _rotary_kernel(positions_ptr, q_ptr, k_ptr, cos_ptr, sin_ptr, stride_qt, stride_qh, stride_kt, stride_kh,
                   stride_table, NUM_Q_HEADS: tl.constexpr, Q_HEADS_PAD: tl.constexpr,
                   NUM_K_HEADS: tl.constexpr, K_HEADS_PAD: tl.constexpr, HALF: tl.constexpr,
                   HALF_PAD: tl.constexpr):
    t = tl.program_id(0)
    pos = tl.load(positions_ptr + t)
    c = tl.arange(0, HALF_PAD)
    cos = tl.load(cos_ptr + pos * stride_table + c, mask=c < HALF, other=0.0)[None, :]
    sin = tl.load(sin_ptr + pos * stride_table + c, mask=c < HALF, other=0.0)[None, :]
    _rotate(q_ptr, t, stride_qt, stride_qh, cos, sin, NUM_Q_HEADS, Q_HEADS_PAD, HALF, HALF_PAD)
    _rotate(k_ptr, t, stride_kt, stride_kh, cos, sin, NUM_K_HEADS, K_HEADS_PAD, HALF, HALF_PAD)


def rotary_embedding_(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_table: torch.Tensor,
                      sin_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates q [T, Hq, D] and k [T, Hkv, D] (views allowed; last dim contiguous) in place by
    ``positions`` [T]; tables [max_positions, D] float32 as cos|cos, sin|sin."""
    check_device(q)
    num_tokens, num_q_heads, head_dim = q.shape
    if num_tokens:
        assert q.stride(2) == 1 and k.stride(2) == 1 and cos_table.is_contiguous() and sin_table.is_contiguous()
        half = head_dim // 2
        _rotary_kernel[(num_tokens,)](
            positions, q, k, cos_table, sin_table, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
            cos_table.stride(0), NUM_Q_HEADS=num_q_heads, Q_HEADS_PAD=triton.next_power_of_2(num_q_heads),
            NUM_K_HEADS=k.shape[1], K_HEADS_PAD=triton.next_power_of_2(k.shape[1]), HALF=half,
            HALF_PAD=triton.next_power_of_2(half))
    return q, k


def rotary_embedding_reference(positions: torch.Tensor, x: torch.Tensor, cos_table: torch.Tensor,
                               sin_table: torch.Tensor) -> torch.Tensor:
    """float32 ``x * cos + rotate_half(x) * sin``."""
    cos, sin = cos_table[positions].unsqueeze(1), sin_table[positions].unsqueeze(1)
    xf = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return xf * cos + rotated * sin
