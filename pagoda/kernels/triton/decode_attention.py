"""Paged decode attention, FlashDecoding-style: one query token per sequence.

Pass 1 runs one program per (sequence, KV head, split): it serves the KV head's whole query-head group
(GQA: the group's queries are the rows of one ``tl.dot``, so each K/V tile is read once for the group),
walks its split's tokens in tiles of ``BLOCK_N`` through the block table with an online softmax, and
writes an unnormalised partial output with its log-sum-exp. Pass 2 combines a sequence's splits in
order. Splits have a fixed size in tokens, so long contexts spread over many programs while a short one
stays one split.

Batch-invariant: the tiles, the splits and their combining order depend only on the sequence's own
length (never on the batch size or the longest sequence of the step), so a sequence's output is the same
bits whatever else runs with it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.triton import check_device


@triton.jit
def _decode_split_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
                         part_out_ptr, part_lse_ptr, scale,
                         stride_qs, stride_qh, stride_ch, stride_cb, stride_ct, stride_bt,
                         stride_ps, stride_ph, stride_pk, stride_ls, stride_lh,
                         GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                         TILES_PER_SPLIT: tl.constexpr, QK_PRECISION: tl.constexpr, PV_FP32: tl.constexpr):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, BLOCK_D)
    heads = kv_head * GROUP + g
    g_mask = g < GROUP
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + seq * stride_qs + heads[:, None] * stride_qh + d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)

    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    row_sum = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
    first = split * TILES_PER_SPLIT
    last = tl.minimum(first + TILES_PER_SPLIT, tl.cdiv(seq_len, BLOCK_N))
    n = tl.arange(0, BLOCK_N)
    cache_head = kv_head * stride_ch
    for tile in range(first, last):
        pos = tile * BLOCK_N + n
        valid = pos < seq_len
        block = tl.load(block_tables_ptr + seq * stride_bt + pos // BLOCK_SIZE, mask=valid, other=0)
        offs = cache_head + block[:, None] * stride_cb + (pos % BLOCK_SIZE)[:, None] * stride_ct + d[None, :]
        k = tl.load(k_cache_ptr + offs, mask=valid[:, None] & d_mask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=QK_PRECISION) * scale  # [GROUP_PAD, BLOCK_N]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        row_sum = row_sum * alpha + tl.sum(p, 1)
        v = tl.load(v_cache_ptr + offs, mask=valid[:, None] & d_mask[None, :], other=0.0)
        if PV_FP32:
            pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m = m_new

    empty = row_sum == 0.0  # a split past the sequence's end
    out = acc / tl.where(empty, 1.0, row_sum)[:, None]
    lse = tl.where(empty, float("-inf"), m + tl.log(tl.where(empty, 1.0, row_sum)))
    base = seq * stride_ps + heads * stride_ph + split * stride_pk
    tl.store(part_out_ptr + base[:, None] + d[None, :], out, mask=g_mask[:, None] & d_mask[None, :])
    tl.store(part_lse_ptr + seq * stride_ls + heads * stride_lh + split, lse, mask=g_mask)


@triton.jit
def _decode_combine_kernel(part_out_ptr, part_lse_ptr, seq_lens_ptr, out_ptr,
                           stride_ps, stride_ph, stride_pk, stride_ls, stride_lh, stride_os, stride_oh,
                           HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT_TOKENS: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    lse_base = part_lse_ptr + seq * stride_ls + head * stride_lh
    out_base = part_out_ptr + seq * stride_ps + head * stride_ph
    m = tl.load(lse_base)  # every sequence has a first split
    w_sum = m * 0.0 + 1.0
    acc = tl.load(out_base + d, mask=d_mask, other=0.0)
    for split in range(1, tl.cdiv(seq_len, SPLIT_TOKENS)):  # in order: a fixed reduction
        lse = tl.load(lse_base + split)
        o = tl.load(out_base + split * stride_pk + d, mask=d_mask, other=0.0)
        m_new = tl.maximum(m, lse)
        alpha = tl.exp(m - m_new)
        w = tl.exp(lse - m_new)
        acc = acc * alpha + o * w
        w_sum = w_sum * alpha + w
        m = m_new
    tl.store(out_ptr + seq * stride_os + head * stride_oh + d, acc / w_sum, mask=d_mask)


def default_block_n() -> int:
    """Keys per tile: 16 under the interpreter (small, fast tests), 64 on CUDA."""
    from pagoda.kernels.triton import on_interpreter

    return 16 if on_interpreter() else 64


def paged_decode_attention(out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float, max_seq_len: int,
                           *, block_n: int | None = None, split_tokens: int = 512) -> None:
    """Writes ``out`` [S, Hq, D] (any float dtype) for S single-token queries ``q`` [S, Hq, D].

    Caches [Hkv, num_blocks, block_size, D]; ``block_tables`` [S, max_blocks]; ``seq_lens`` [S] (context
    lengths including the new token, whose K/V is already in the cache). ``max_seq_len`` bounds the
    splits launched (a CUDA graph passes the model's maximum). ``split_tokens`` must be a multiple of
    ``block_n``; both fixed per device so that results stay batch-invariant.
    """
    check_device(q)
    num_seqs, num_heads, head_dim = q.shape
    if num_seqs == 0:
        return
    num_kv_heads, _, block_size, _ = k_cache.shape
    block_n = block_n or default_block_n()
    if split_tokens % block_n:
        raise ValueError(f"split_tokens ({split_tokens}) must be a multiple of block_n ({block_n})")
    assert q.stride(-1) == 1 and out.stride(-1) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    group = num_heads // num_kv_heads
    num_splits = triton.cdiv(max_seq_len, split_tokens)
    part_out = torch.empty((num_seqs, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(head_dim)
    _decode_split_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, part_out, part_lse, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, TILES_PER_SPLIT=split_tokens // block_n,
        QK_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        PV_FP32=v_cache.dtype != torch.bfloat16)
    _decode_combine_kernel[(num_seqs, num_heads)](
        part_out, part_lse, seq_lens, out,
        part_out.stride(0), part_out.stride(1), part_out.stride(2), part_lse.stride(0), part_lse.stride(1),
        out.stride(0), out.stride(1), HEAD_DIM=head_dim, BLOCK_D=block_d, SPLIT_TOKENS=split_tokens)
