"""Paged decode and prefill attention kernels against the float32 torch reference (Triton's interpreter
on CPU; compiled on a GPU)."""

from __future__ import annotations

import pytest
import torch
from kernel_device import DEVICE
from paged_case import paged_case

from pagoda.kernels.triton.attention_reference import paged_attention_reference
from pagoda.kernels.triton.decode_attention import paged_decode_attention
from pagoda.kernels.triton.kv_cache_write import write_kv_cache, write_kv_cache_reference
from pagoda.kernels.triton.prefill_attention import paged_prefill_attention

SCALE = 0.11
# (num_kv_heads, group, head_dim, block_size): GQA ratios 1/3/8, head dims 64/128, block sizes 16/32
SHAPES = [(2, 1, 64, 16), (1, 3, 128, 32), (1, 8, 64, 32), (2, 3, 64, 16)]


def _decode(case, dtype_out=torch.float32, **kw):
    t = case.tensors(DEVICE)
    out = torch.empty(t["q"].shape, dtype=dtype_out, device=DEVICE)
    paged_decode_attention(out, t["q"], t["k_cache"], t["v_cache"], t["block_tables"], t["seq_lens"], SCALE,
                           max(case.seq_lens), block_n=16, **kw)
    return out.cpu()


def _prefill(case, dtype_out=torch.float32):
    t = case.tensors(DEVICE)
    out = torch.empty(t["q"].shape, dtype=dtype_out, device=DEVICE)
    max_q = max(e - s for s, e in zip(case.query_start_loc, case.query_start_loc[1:]))
    paged_prefill_attention(out, t["q"], t["k_cache"], t["v_cache"], t["block_tables"], t["query_start_loc"],
                            t["seq_lens"], SCALE, max_q, block_m=16, block_n=16)
    return out.cpu()


def _reference(case):
    return paged_attention_reference(case.q, case.k_cache, case.v_cache, case.block_tables, case.query_start_loc,
                                     case.seq_lens, SCALE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_decode_matches_reference(shape, dtype):
    hkv, group, d, bs = shape
    # one token, a partial last block, an exact block multiple, several splits of 32 tokens
    lens = [1, bs + 3, 2 * bs, 75]
    case = paged_case(lens, [1] * len(lens), hkv, group, d, bs, dtype)
    ref = _reference(case)
    out = _decode(case, split_tokens=32)
    assert (out - ref).abs().max().item() < 1e-5
    if dtype == torch.float16:  # the same in the activation dtype: off by at most one rounding
        out16 = _decode(case, dtype_out=torch.float16, split_tokens=32)
        torch.testing.assert_close(out16, ref.half(), atol=1e-3, rtol=1e-3)


def test_decode_is_batch_invariant():
    """A sequence's output is the same bits alone and in a batch with longer ones (more splits launched)."""
    hkv, group, d, bs = 1, 3, 64, 16
    case = paged_case([40, 200, 7], [1, 1, 1], hkv, group, d, bs, torch.float32, seed=3)
    together = _decode(case, split_tokens=32)
    alone = paged_case([40], [1], hkv, group, d, bs, torch.float32)
    alone.q, alone.k_cache, alone.v_cache = case.q[:1], case.k_cache, case.v_cache
    alone.block_tables = case.block_tables[:1]
    assert torch.equal(_decode(alone, split_tokens=32)[0], together[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_prefill_matches_reference(shape, dtype):
    hkv, group, d, bs = shape
    # whole prompts (one token, a partial block, two query tiles) and a later chunk after 2 cached blocks
    seq_lens = [1, bs + 5, 37, 2 * bs + 9]
    query_lens = [1, bs + 5, 37, 9]
    case = paged_case(seq_lens, query_lens, hkv, group, d, bs, dtype, seed=1)
    assert (_prefill(case) - _reference(case)).abs().max().item() < 1e-5


def test_prefill_prefix_hits_read_shared_blocks():
    """Sequences whose first two blocks are the same physical blocks (a prefix-cache hit), each with its
    own suffix as the new chunk."""
    case = paged_case([45, 40, 33], [13, 8, 1], 2, 3, 64, 16, torch.float32, seed=2, shared_prefix_blocks=2)
    assert case.block_tables[0, :2].tolist() == case.block_tables[1, :2].tolist()
    assert (_prefill(case) - _reference(case)).abs().max().item() < 1e-5


def test_prefill_is_chunk_invariant():
    """A prompt computed in one go or in chunks of 20 + 17 + 13 rows gives the same bits per row."""
    n = 50
    whole = paged_case([n], [n], 1, 3, 64, 16, torch.float32, seed=4)
    one = _prefill(whole)
    rows = []
    for start, end in [(0, 20), (20, 37), (37, 50)]:
        chunk = paged_case([end], [end - start], 1, 3, 64, 16, torch.float32, seed=4)
        chunk.q, chunk.k_cache, chunk.v_cache = whole.q[start:end], whole.k_cache, whole.v_cache
        chunk.block_tables = whole.block_tables
        rows.append(_prefill(chunk))
    assert torch.equal(torch.cat(rows), one)


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kv_cache_write(block_size, dtype):
    g = torch.Generator().manual_seed(0)
    hkv, d, num_blocks = 3, 64, 6
    k = torch.randn(7, hkv, d, generator=g).to(dtype)
    v = torch.randn(7, hkv, d, generator=g).to(dtype)
    slots = torch.tensor([5, block_size * 3 + 1, block_size * 3 + 2, -1, block_size * 5 + block_size - 1, 0, 17])
    caches = [torch.zeros(hkv, num_blocks, block_size, d, dtype=dtype) for _ in range(4)]
    kc, vc = caches[0].to(DEVICE), caches[1].to(DEVICE)
    write_kv_cache(k.to(DEVICE), v.to(DEVICE), kc, vc, slots.to(DEVICE))
    write_kv_cache_reference(k, v, caches[2], caches[3], slots)
    assert torch.equal(kc.cpu(), caches[2]) and torch.equal(vc.cpu(), caches[3])
    assert caches[2].abs().sum() > 0
