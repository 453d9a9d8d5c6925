"""kv_cache_dtype="int8" / "fp8": rows of codes plus a float16 scale per token and head. The rows against
their float values (bounded error), the C++ attention over quantized blocks against a float64 reference on the
dequantized blocks, batch invariance (bitwise), the pool's capacity, and whole models on both CPU backends
(with the prefix cache unchanged)."""

from __future__ import annotations

import pytest
import torch

from pagoda import LLM, SamplingParams
from pagoda.attention import quantized_kv
from pagoda.config import ModelConfig
from pagoda.engine.model_runner import kv_cache_bytes_per_block
from pagoda.kernels import cpu_kernels

CODES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_rows_round_trip_within_one_code_step(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 64, generator=g) * torch.logspace(-3, 2, 40)[:, None, None]
    rows = quantized_kv.quantize(x, CODES[kind])
    assert rows.shape == (40, 3, 66) and rows.dtype == CODES[kind]
    back = quantized_kv.dequantize(rows, torch.float32)
    exact = x.abs().amax(-1, keepdim=True) / quantized_kv.QMAX[CODES[kind]]
    scale = quantized_kv.scales(rows)
    assert (scale >= exact).all()  # rounded up: nothing clipped
    normal = exact >= 2**-14
    assert (scale[normal] <= exact[normal] * (1 + 2**-10)).all()  # one float16 step
    if kind == "int8":  # half a step of the stored scale
        assert ((back - x).abs() <= scale * 0.5 * (1 + 1e-6)).all()
    else:  # E4M3 keeps 3 mantissa bits: relative 1/16, and subnormals a 2^-9 step of the scale
        assert ((back - x).abs() <= x.abs() / 16 + scale * 2**-9).all()


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_cache_write_matches_the_portable_quantization(kind, dtype):
    assert cpu_kernels.available()
    g = torch.Generator().manual_seed(3)
    k = (torch.randn(9, 2, 64, generator=g) * torch.logspace(-9, 3, 9)[:, None, None]).to(dtype)
    v = torch.randn(9, 2, 64, generator=g).to(dtype)
    v[4] = 0  # an all-zero row
    k_cache = torch.zeros(2, 4, 16, 66, dtype=CODES[kind])
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([3, 17, 0, 63, 40, -1, 8, 9, 33])  # -1: a padding token, not stored
    torch.ops.pagoda.write_kv_cache_quantized_(k, v, k_cache, v_cache, slots)
    for cache, x in ((k_cache, k), (v_cache, v)):
        flat = cache.view(torch.uint8).view(2, -1, 66)
        keep = slots >= 0
        expected = quantized_kv.quantize(x[keep], CODES[kind]).view(torch.uint8).transpose(0, 1)
        assert torch.equal(flat[:, slots[keep]], expected)
        assert flat.sum(dtype=torch.int64) == expected.sum(dtype=torch.int64)  # nothing else written


def _reference(q, k_rows, v_rows, tables, lens, block_size, scale):
    """float64 attention of each query row over its dequantized context."""
    out = torch.empty(q.shape, dtype=torch.float64)
    hkv = k_rows.shape[0]
    group = q.shape[1] // hkv
    for s in range(q.shape[0]):
        n = int(lens[s])
        slots = [int(tables[s, j // block_size]) * block_size + j % block_size for j in range(n)]
        keys = quantized_kv.dequantize(k_rows.reshape(hkv, -1, k_rows.shape[-1])[:, slots], torch.float64)
        values = quantized_kv.dequantize(v_rows.reshape(hkv, -1, v_rows.shape[-1])[:, slots], torch.float64)
        for h in range(q.shape[1]):
            p = torch.softmax(keys[h // group] @ q[s, h].double() * scale, dim=0)
            out[s, h] = p @ values[h // group]
    return out


def _caches(kind, hkv=2, blocks=24, block_size=16, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(hkv, blocks, block_size, d, generator=g) * 2
    v = torch.randn(hkv, blocks, block_size, d, generator=g)
    return quantized_kv.quantize(k, CODES[kind]), quantized_kv.quantize(v, CODES[kind])


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_reads_quantized_blocks(kind, dtype):
    assert cpu_kernels.available()
    k_rows, v_rows = _caches(kind)
    g = torch.Generator().manual_seed(1)
    seqs, hq = 5, 6
    tables = torch.stack([torch.randperm(24, generator=g)[:6] for _ in range(seqs)])
    lens = torch.tensor([1, 17, 40, 96, 63])
    q = torch.randn(seqs, hq, 64, generator=g).to(dtype)
    out = torch.empty_like(q)
    torch.ops.pagoda.paged_attention_rows_quantized(out, q, k_rows, v_rows, tables, lens, None, 0.125)
    ref = _reference(q, k_rows, v_rows, tables, lens, 16, 0.125)
    tol = 2e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    # each row alone gives the same bits (one task per query row and KV head)
    for s in range(seqs):
        alone = torch.empty_like(q[s:s + 1])
        torch.ops.pagoda.paged_attention_rows_quantized(alone, q[s:s + 1].clone(), k_rows, v_rows, tables[s:s + 1],
                                                        lens[s:s + 1], None, 0.125)
        assert torch.equal(alone[0], out[s])


def test_pool_holds_about_twice_the_tokens():
    config = ModelConfig.__new__(ModelConfig)  # the default model's KV shape: 30 layers, 3 KV heads, head_dim 64
    object.__setattr__(config, "num_hidden_layers", 30)
    object.__setattr__(config, "num_key_value_heads", 3)
    object.__setattr__(config, "head_dim", 64)
    object.__setattr__(config, "dtype", torch.bfloat16)
    dense = kv_cache_bytes_per_block(config, 16)
    for kind in ("int8", "fp8"):
        ratio = dense / kv_cache_bytes_per_block(config, 16, kind)
        assert ratio == pytest.approx(128 / 66)  # 1.94x: 64 one-byte codes and a 2-byte scale per row


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_engine_pool_capacity_in_the_same_memory(tiny_model_factory, kind):
    path = tiny_model_factory()
    blocks = {}
    for kv in ("auto", kind):
        llm = LLM(path, dtype="bfloat16", kv_cache_dtype=kv, kv_cache_memory_gb=0.01, show_progress=False)
        runner = llm.engine.runner
        blocks[kv] = llm.engine.cache_config.num_blocks
        held = sum(t.numel() * t.element_size() for pair in runner.kv_caches for t in pair)
        assert held <= 0.01 * 2**30 * 1.05  # scratch block aside, within the budget
    assert blocks[kind] / blocks["auto"] == pytest.approx(32 / 18, rel=0.01)  # head_dim 16: 32 B -> 18 B a row


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_model_with_quantized_kv_tracks_dense_kv_and_prefix_cache_is_unchanged(tiny_model_factory, backend, kind):
    path = tiny_model_factory()
    prompt = "The quick brown fox jumps over the lazy dog. Paged attention stores keys and values in blocks."
    params = SamplingParams(temperature=0, max_tokens=6, prompt_logprobs=0, ignore_eos=True)
    runs = {}
    for kv in ("auto", kind):
        llm = LLM(path, dtype="float32", kv_cache_dtype=kv, attention_backend=backend, num_kv_blocks=32,
                  show_progress=False)
        first = llm.generate(prompt, params)[0]
        again = llm.generate(prompt, params)[0]  # the prompt's blocks now come from the prefix cache
        assert again.outputs[0].token_ids == first.outputs[0].token_ids
        if backend == "cpu":  # batch-invariant kernels: a cache hit gives the same bits
            assert [e[t].logprob for e, t in zip(again.prompt_logprobs[1:], again.prompt_token_ids[1:])] == \
                [e[t].logprob for e, t in zip(first.prompt_logprobs[1:], first.prompt_token_ids[1:])]
        runs[kv] = torch.tensor([e[t].logprob for e, t in zip(first.prompt_logprobs[1:], first.prompt_token_ids[1:])])
    diff = (runs[kind] - runs["auto"]).abs().mean()
    assert diff < (0.005 if kind == "int8" else 0.02) * runs["auto"].abs().mean()


def test_unknown_kv_cache_dtype_is_rejected(tiny_model_factory):
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        LLM(tiny_model_factory(), kv_cache_dtype="int4", num_kv_blocks=16, show_progress=False)
