"""Prefill / chunked-prefill attention over the paged KV cache, FlashAttention-2-style.

One program per (sequence, query head, tile of ``BLOCK_M`` new tokens). The new tokens' K/V are already
in the cache (the cache write runs first), so a chunk and a prefix-cache hit read the earlier blocks in
place through the block table; nothing is gathered into a copy. Keys are visited in tiles of ``BLOCK_N``
positions from the first, with an online softmax (running max and sum in float32), up to the tile's last
causal position. Sequences have any lengths (flat, no padding): ``query_start_loc`` delimits them.

Batch- and chunk-invariant: a query row visits the same key tiles in the same order whatever its chunk
or batch; tiles past its causal limit (reached when its tile holds later rows) are masked to -inf, and
those steps leave its running max, sum and output bit-for-bit unchanged (a factor exp(0) = 1 and terms
exp(-inf) = 0).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.kernels.triton import check_device, on_interpreter


@triton.jit
def _prefill_kernel(q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, query_start_ptr, seq_lens_ptr, block_tables_ptr,
                    scale, stride_qt, stride_qh, stride_ot, stride_oh, stride_ch, stride_cb, stride_ct, stride_bt,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, QK_PRECISION: tl.constexpr,
                    PV_FP32: tl.constexpr):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    m_tile = tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    context = seq_len - q_len  # tokens before this chunk (earlier chunks, prefix-cache hits)

    rows = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < q_len
    q_pos = context + rows  # absolute positions of the tile's queries
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q = tl.load(q_ptr + (q_start + rows)[:, None] * stride_qt + head * stride_qh + d[None, :],
                mask=row_mask[:, None] & d_mask[None, :], other=0.0)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # keys up to the tile's last query (none when the tile lies past the chunk)
    key_end = tl.where(m_tile * BLOCK_M < q_len, tl.minimum(seq_len, context + (m_tile + 1) * BLOCK_M), 0)
    n = tl.arange(0, BLOCK_N)
    cache_head = (head // GROUP) * stride_ch
    for tile in range(0, tl.cdiv(key_end, BLOCK_N)):
        k_pos = tile * BLOCK_N + n
        valid = k_pos < seq_len
        block = tl.load(block_tables_ptr + seq * stride_bt + k_pos // BLOCK_SIZE, mask=valid, other=0)
        offs = cache_head + block[:, None] * stride_cb + (k_pos % BLOCK_SIZE)[:, None] * stride_ct + d[None, :]
        k = tl.load(k_cache_ptr + offs, mask=valid[:, None] & d_mask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=QK_PRECISION) * scale  # [BLOCK_M, BLOCK_N]
        s = tl.where(k_pos[None, :] <= q_pos[:, None], s, float("-inf"))  # causal (and k_pos < seq_len)
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

    out = acc / tl.where(row_mask, row_sum, 1.0)[:, None]
    tl.store(out_ptr + (q_start + rows)[:, None] * stride_ot + head * stride_oh + d[None, :], out,
             mask=row_mask[:, None] & d_mask[None, :])


def default_tiles() -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): 16 x 16 under the interpreter (small, fast tests), 64 x 64 on CUDA."""
    return (16, 16) if on_interpreter() else (64, 64)


def paged_prefill_attention(out: torch.Tensor, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                            scale: float, max_query_len: int, *, block_m: int | None = None,
                            block_n: int | None = None) -> None:
    """Writes ``out`` [T, Hq, D] (any float dtype) for the flat new queries ``q`` [T, Hq, D] of S sequences.

    Sequence i's queries are rows ``query_start_loc[i]:query_start_loc[i+1]`` (relative to ``q``), the last
    of its ``seq_lens[i]`` context tokens, whose K/V are all in the caches [Hkv, num_blocks, block_size, D]
    already. ``block_tables`` [S, max_blocks]; ``max_query_len`` sizes the grid.
    """
    check_device(q)
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_seqs = seq_lens.shape[0]
    if num_seqs == 0 or max_query_len == 0:
        return
    num_kv_heads, _, block_size, _ = k_cache.shape
    default_m, default_n = default_tiles()
    block_m, block_n = block_m or default_m, block_n or default_n
    assert q.stride(-1) == 1 and out.stride(-1) == 1 and k_cache.is_contiguous() and v_cache.is_contiguous()
    grid = (num_seqs, num_heads, triton.cdiv(max_query_len, block_m))
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, query_start_loc, seq_lens, block_tables, scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=triton.next_power_of_2(head_dim),
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=block_n,
        QK_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", PV_FP32=v_cache.dtype != torch.bfloat16)
