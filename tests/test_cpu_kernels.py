"""Pagoda's C++ CPU kernels against the portable PyTorch computations they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagoda.attention.metadata import AttentionMetadata
from pagoda.attention.torch_backend import TorchAttentionBackend
from pagoda.kernels import cpu_kernels
from pagoda.layers.rotary import RotaryEmbedding, _rotate_half

# float32: rounding-order differences only; bf16: one rounding of float32 math vs several
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(scope="module", autouse=True)
def kernels() -> None:
    assert cpu_kernels.available(), "the CPU kernels must build on the CI machine"


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 96, generator=g).to(dtype)
    residual = torch.randn(7, 96, generator=g).to(dtype)
    weight = (1 + 0.1 * torch.randn(96, generator=g)).to(dtype)
    want_residual = x + residual
    want = F.rms_norm(want_residual.float(), (96,), weight.float(), 1e-5)
    torch.ops.pagoda.fused_add_rms_norm_(x, residual, weight, 1e-5)
    assert torch.equal(residual, want_residual)  # the sum is rounded like the unfused add
    torch.testing.assert_close(x.float(), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_in_place_on_strided_views(dtype: torch.dtype) -> None:
    rope = RotaryEmbedding(16, 64, 10000.0, None)
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(5, (4 + 2 * 2) * 16, generator=g).to(dtype)
    q, k = qkv[:, :64].view(5, 4, 16), qkv[:, 64:96].view(5, 2, 16)  # views of a fused projection
    v_before = qkv[:, 96:].clone()
    positions = torch.tensor([0, 3, 17, 40, 63])
    cos, sin = rope.cos[positions].unsqueeze(1), rope.sin[positions].unsqueeze(1)
    want_q = q.float() * cos + _rotate_half(q.float()) * sin
    want_k = k.float() * cos + _rotate_half(k.float()) * sin
    torch.ops.pagoda.rotary_embedding_(positions, q, k, rope.cos, rope.sin)
    torch.testing.assert_close(q.float(), want_q, **TOL[dtype])
    torch.testing.assert_close(k.float(), want_k, **TOL[dtype])
    assert torch.equal(qkv[:, 96:], v_before)  # v untouched


def _paged_batch(seq_lens: list[int], dtype: torch.dtype, hq: int = 6, hkv: int = 2, d: int = 32,
                 block_size: int = 4, num_blocks: int = 64, seed: int = 0):
    """Random caches with each sequence's blocks scattered over the pool."""
    g = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(hkv, num_blocks, block_size, d, generator=g).to(dtype)
    v_cache = torch.randn(hkv, num_blocks, block_size, d, generator=g).to(dtype)
    perm = torch.randperm(num_blocks, generator=g).tolist()
    tables, max_blocks = [], max(-(-n // block_size) for n in seq_lens)
    for n in seq_lens:
        need = -(-n // block_size)
        tables.append([perm.pop() for _ in range(need)] + [0] * (max_blocks - need))
    q = torch.randn(len(seq_lens), hq, d, generator=g).to(dtype)
    return q, k_cache, v_cache, torch.tensor(tables), torch.tensor(seq_lens)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("d", [32, 48, 40, 128])  # register-blocked by 16-wide chunks; 40: the generic path
def test_paged_decode_attention_matches_gather_and_softmax(dtype: torch.dtype, group: int, d: int) -> None:
    seq_lens = [1, 4, 5, 17, 30]
    q, k_cache, v_cache, tables, lens = _paged_batch(seq_lens, dtype, hq=2 * group, hkv=2, d=d)
    out = torch.empty_like(q)
    torch.ops.pagoda.paged_decode_attention(out, q, k_cache, v_cache, tables, lens, 0.125)
    for s, n in enumerate(seq_lens):
        blocks = tables[s, : -(-n // 4)]
        keys = k_cache[:, blocks].reshape(2, -1, q.shape[-1])[:, :n].float()  # [Hkv, n, D]
        values = v_cache[:, blocks].reshape(2, -1, q.shape[-1])[:, :n].float()
        keys, values = keys.repeat_interleave(group, 0), values.repeat_interleave(group, 0)
        probs = torch.softmax(torch.einsum("hd,hnd->hn", q[s].float(), keys) * 0.125, dim=-1)
        torch.testing.assert_close(out[s].float(), torch.einsum("hn,hnd->hd", probs, values), **TOL[dtype])


def test_paged_decode_attention_rejects_short_block_table() -> None:
    q, k_cache, v_cache, tables, lens = _paged_batch([8], torch.float32)
    with pytest.raises(RuntimeError, match="longer than its block table"):
        torch.ops.pagoda.paged_decode_attention(torch.empty_like(q), q, k_cache, v_cache, tables,
                                                torch.tensor([9]), 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_cache_places_tokens_at_their_slots(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    kv = torch.randn(6, 2 * 3 * 8, generator=g).to(dtype)
    k, v = kv[:, :24].view(6, 3, 8), kv[:, 24:].view(6, 3, 8)
    slots = torch.tensor([0, 5, 6, 7, 30, 31])
    got = [torch.zeros(3, 8, 4, 8, dtype=dtype) for _ in range(2)]
    want = [torch.zeros(3, 8, 4, 8, dtype=dtype) for _ in range(2)]
    torch.ops.pagoda.write_kv_cache_(k, v, got[0], got[1], slots)
    TorchAttentionBackend(3, 3, 8, 1.0)._write_cache(k, v, want[0], want[1], slots)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype: torch.dtype) -> None:
    x = (torch.randn(9, 2 * 40, generator=torch.Generator().manual_seed(3)) * 4).to(dtype)
    want = F.silu(x[:, :40].float()) * x[:, 40:].float()
    torch.testing.assert_close(torch.ops.pagoda.silu_and_mul(x).float(), want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_backend_equals_torch_backend_on_a_mixed_batch(dtype: torch.dtype) -> None:
    """Two decodes and a prefill chunk over a cached prefix: same output and caches either way."""
    from pagoda.attention.cpu_backend import CpuAttentionBackend

    hq, hkv, d, bs = 4, 2, 16, 4
    g = torch.Generator().manual_seed(4)
    q_lens, seq_lens = [1, 1, 6], [9, 3, 14]
    tables = torch.tensor([[3, 7, 1, 0], [5, 0, 0, 0], [2, 4, 6, 8]])
    slots = []
    for t, (ql, n) in enumerate(zip(q_lens, seq_lens, strict=True)):
        slots += [int(tables[t, p // bs]) * bs + p % bs for p in range(n - ql, n)]
    total = sum(q_lens)
    q = torch.randn(total, hq, d, generator=g).to(dtype)
    k = torch.randn(total, hkv, d, generator=g).to(dtype)
    v = torch.randn(total, hkv, d, generator=g).to(dtype)
    starts = [0, 1, 2, 8]
    meta = AttentionMetadata(torch.tensor(slots), torch.tensor(starts), torch.tensor(seq_lens), tables, 2,
                             max(seq_lens), starts, seq_lens)
    caches = torch.randn(2, hkv, 10, bs, d, generator=g).to(dtype)
    outs = []
    for backend in (TorchAttentionBackend, CpuAttentionBackend):
        kc, vc = caches[0].clone(), caches[1].clone()
        outs.append((backend(hq, hkv, d, d ** -0.5).forward(q, k, v, kc, vc, meta), kc, vc))
    torch.testing.assert_close(outs[1][0], outs[0][0], **TOL[dtype])
    assert torch.equal(outs[1][1], outs[0][1]) and torch.equal(outs[1][2], outs[0][2])


def test_engine_outputs_equal_with_and_without_kernels(tiny_llama_dir, monkeypatch) -> None:
    """The whole model in float32 through the kernels and through the portable path: same greedy
    tokens, logprobs within rounding."""
    from pagoda import LLM, SamplingParams

    prompts = [[1, 5, 9, 2, 7], [3] * 40, list(range(2, 30))]
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=0, ignore_eos=True)
    results = []
    for use_kernels in (True, False):
        monkeypatch.setattr(cpu_kernels, "available", lambda use=use_kernels: use)
        llm = LLM(tiny_llama_dir, dtype="float32", show_progress=False)
        results.append(llm.generate(prompts, params, use_tqdm=False))
    for fast, portable in zip(*results, strict=True):
        assert fast.outputs[0].token_ids == portable.outputs[0].token_ids
        for a, b in zip(fast.outputs[0].logprobs, portable.outputs[0].logprobs, strict=True):
            token = next(iter(a))
            assert abs(a[token].logprob - b[token].logprob) < 1e-4


@pytest.mark.parametrize("rows", [1, 2, 4])
@pytest.mark.parametrize("k", [64, 48])  # 64: the bf16-pair instruction path where the CPU has it; 48: the other
def test_gemv_bf16(rows: int, k: int) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(rows, k, generator=g).bfloat16()
    w = torch.randn(300, k, generator=g).bfloat16()
    want = x.float() @ w.float().T
    torch.testing.assert_close(torch.ops.pagoda.gemv_bf16(x, w).float(), want, atol=5e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [1000, 1024, 1100])  # mask covers part of / exactly / more than the row
def test_apply_token_bitmask_matches_the_bit_definition(dtype: torch.dtype, vocab: int) -> None:
    g = torch.Generator().manual_seed(vocab)
    words = torch.randint(-(2**31), 2**31 - 1, (32,), dtype=torch.int64, generator=g)
    words[3], words[5] = -1, 0  # all allowed, all banned
    bitmask = words.to(torch.int32)
    logits = torch.randn(vocab, generator=g).to(dtype)
    want = logits.clone()
    for t in range(vocab):
        if t >= 32 * 32 or not (int(words[t // 32]) >> (t % 32)) & 1:
            want[t] = float("-inf")
    torch.ops.pagoda.apply_token_bitmask_(logits, bitmask)
    assert torch.equal(logits, want)
