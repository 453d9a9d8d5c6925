"""GGUF K-quants kept packed: Q4_K on the 4-bit path (exact weights), Q5_K / Q6_K (and mixed fused layers) on the
int8 VNNI kernel ``kquant_linear``. The blocks are random bytes built by the tests (any bytes are a valid block),
unpacked against gguf-py's own dequantizer, the kernel against a float64 reference, batch invariance bitwise,
then whole GGUF models against the dequantized float32 model and transformers; parameter bytes checked."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, quants
from gguf import GGMLQuantizationType as Q
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import assert_greedy_matches, reference_logits
from tiny_gguf import TINY, hf_weights, pack, write_llama

from pagoda import LLM, SamplingParams
from pagoda.engine.args import EngineArgs
from pagoda.kernels import cpu_kernels
from pagoda.layers.linear import ColumnParallelLinear, QKVParallelLinear
from pagoda.quantization.gguf_int4 import Int4Linear, unpack_q4_affine
from pagoda.quantization.gguf_kquant import (
    KQuantLinear,
    pack_for_kernel,
    reference_kquant_linear,
    sub_block,
    unpack_blocks,
    unpack_kquant,
)

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)
BATCH = st.sampled_from([1, 2, 3, 4, 5, 15, 16, 17, 63, 64, 65, 100, 130])
K_QUANTS = [Q.Q4_K, Q.Q5_K, Q.Q6_K]


@pytest.fixture(scope="module", autouse=True)
def kernels() -> None:
    assert cpu_kernels.available(), "the CPU kernels must build on the CI machine"
    assert torch.ops.pagoda.int8_block_linear_available(), "this CPU has AVX-512 VNNI: the K-quant kernel must run"


def _blocks(kind: Q, rows: int, cols: int, seed: int, k_scale: float = 1e-3) -> np.ndarray:
    return pack(np.zeros((rows, cols), np.float32), kind, np.random.default_rng(seed), k_scale)


def _gguf_weights(kind: Q, data: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    return torch.from_numpy(quants.dequantize(data, kind).reshape(shape).astype(np.float32))


@pytest.mark.parametrize("kind", K_QUANTS)
def test_unpacked_blocks_are_gguf_dequantization_bit_for_bit(kind):
    shape = (48, 512)
    data = _blocks(kind, *shape, seed=3, k_scale=0.01)
    codes, scale, offset = unpack_kquant(kind, data, shape)
    assert codes.dtype == torch.uint8 and scale.shape == offset.shape == (48, 512 // sub_block(kind))
    assert int(codes.max()) <= {Q.Q4_K: 15, Q.Q5_K: 31, Q.Q6_K: 63}[kind]
    assert int(codes.max()) == {Q.Q4_K: 15, Q.Q5_K: 31, Q.Q6_K: 63}[kind]  # every bit plane is read
    s, o = (t.repeat_interleave(sub_block(kind), 1) for t in (scale, offset))
    expected = _gguf_weights(kind, data, shape)
    if kind == Q.Q6_K:  # w = d sc (q - 32): the offset is -32 times the scale
        assert torch.equal(o, -32 * s)
        assert torch.equal((codes.float() - 32) * s, expected)
    else:
        assert torch.equal(codes.float() * s + o, expected)


def test_q4_k_joins_the_4bit_path_exactly():
    shape = (32, 256)
    data = _blocks(Q.Q4_K, *shape, seed=5)
    q, scale, offset = unpack_q4_affine(Q.Q4_K, data, shape)
    assert torch.equal(q.float() * scale.repeat_interleave(32, 1) + offset.repeat_interleave(32, 1),
                       _gguf_weights(Q.Q4_K, data, shape))
    layer = Int4Linear(ColumnParallelLinear(256, 32), torch.float32, deterministic=True)
    layer.load_quantized(Q.Q4_K, data, shape, None)
    layer.finalize()
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(0))
    exact = x.double() @ _gguf_weights(Q.Q4_K, data, shape).double().t()
    assert (layer(x).double() - exact).abs().max() < 1e-4 * exact.abs().max()  # float32 weights, exactly as stored


def _kq_layer(kinds: list[Q], in_features: int, seed: int) -> tuple[KQuantLinear, torch.Tensor]:
    """A KQuantLinear of one part per kind (a fused q/k/v when three) and its float32 gguf weights."""
    if len(kinds) == 3:
        base = QKVParallelLinear(in_features, 32, 8, 2)  # q 256 rows, k and v 64
        sizes = [256, 64, 64]
        shards: list[object] = ["q", "k", "v"]
    else:
        base, sizes, shards = ColumnParallelLinear(in_features, 72), [72], [None]  # a part-filled vector
    layer = KQuantLinear(base, min(sub_block(k) for k in kinds))
    dense = []
    for i, (kind, rows, shard) in enumerate(zip(kinds, sizes, shards, strict=True)):
        if kind in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
            data = _blocks(kind, rows, in_features, seed + i)
        else:  # Q4_0 / Q4_1 / Q8_0 from gguf's own quantizer
            w = np.random.default_rng(seed + i).standard_normal((rows, in_features)).astype(np.float32) * 0.1
            data = quants.quantize(w, kind)
        assert data.shape == (rows, in_features // GGML_QUANT_SIZES[kind][0] * GGML_QUANT_SIZES[kind][1])
        layer.load_quantized(kind, data, (rows, in_features), shard)
        dense.append(_gguf_weights(kind, data, (rows, in_features)))
    layer.finalize()
    return layer, torch.cat(dense)


CASES = [[Q.Q6_K], [Q.Q5_K], [Q.Q4_K, Q.Q4_K, Q.Q6_K], [Q.Q8_0, Q.Q4_1, Q.Q5_K], [Q.Q4_0, Q.Q6_K, Q.Q8_0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kinds", CASES, ids=lambda ks: "+".join(k.name for k in ks))
@pytest.mark.parametrize("m", [1, 6, 67])
def test_kernel_matches_float64_references(dtype, kinds, m):
    layer, dense = _kq_layer(kinds, 512, seed=m)
    codes, scale, offset = layer.unpacked()
    block = layer.block
    w = codes.double().view(-1, 512 // block, block) * scale.double()[..., None] + offset.double()[..., None]
    assert torch.equal(w.view(-1, 512).float(), dense)  # the layer holds exactly the stored weights
    x = torch.randn(m, 512, generator=torch.Generator().manual_seed(m)).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (m, dense.shape[0])
    ref = reference_kquant_linear(x, codes, scale, offset)  # the kernel's arithmetic, exactly
    tol = 1e-5 if dtype == torch.float32 else 8e-3  # float32 block sums / bfloat16 output rounding
    assert ((y.double() - ref).abs() <= tol * ref.abs().max()).all()
    exact = x.double() @ dense.double().t()  # int8 activations per sub-block: well under a percent
    assert (ref - exact).norm() / exact.norm() < 0.01


@given(m=BATCH, seed=st.integers(0, 2**16), case=st.sampled_from(range(len(CASES))))
@SETTINGS
def test_kquant_linear_is_batch_invariant(m, seed, case):
    layer, _ = _kq_layer(CASES[case], 256, seed % 5)
    x = torch.randn(m, 256, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    full = layer(x)
    for r in {0, m // 2, m - 1}:
        assert torch.equal(layer(x[r:r + 1].clone())[0], full[r]), f"row {r} of {m} differs from the row alone"
    for k in (1, 4, 5, 16, 17, 64, 65):
        if k < m:
            assert torch.equal(layer(x[:k].clone()), full[:k]), f"the first {k} rows differ"


def test_pack_layout_and_bad_input():
    codes = torch.randint(0, 256, (40, 64), dtype=torch.uint8)
    scale, offset = torch.rand(40, 4), torch.rand(40, 4)
    packed, s, o = pack_for_kernel(codes, scale, offset)
    assert packed.shape == (3, 16, 16, 4) and s.shape == o.shape == (3, 4, 16)
    assert torch.equal(packed[1, 5, 7], codes[16 + 7, 20:24])  # vector 1, k-quad 5, output 7
    assert float(o[2, 3, 1]) == float(offset[33, 3]) and float(s[2, 3, 8]) == 0.0  # padded outputs are zero
    with pytest.raises(ValueError, match="Q2_K cannot be kept packed"):
        unpack_blocks(Q.Q2_K, _blocks(Q.Q2_K, 1, 256, 0), (1, 256))
    with pytest.raises(ValueError, match="sub-blocks of 16, this layer 32"):
        KQuantLinear(ColumnParallelLinear(256, 16), 32).load_quantized(Q.Q6_K, _blocks(Q.Q6_K, 16, 256, 0),
                                                                       (16, 256), None)
    with pytest.raises(RuntimeError, match="block must be 16 or 32"):
        torch.ops.pagoda.kquant_linear(torch.randn(1, 64), packed, s, o, 8, 40, torch.float32)


# The activations are int8 per sub-block (as for Q8_0): a greedy token may differ from the float32 argmax only
# where the float32 top two are closer than this margin (logits here are tens of units apart at most).
MARGIN = 0.1
MIXED = {"self_attn.q_proj.weight": Q.Q4_K, "self_attn.k_proj.weight": Q.Q4_K, "self_attn.v_proj.weight": Q.Q6_K,
         "self_attn.o_proj.weight": Q.Q5_K, "mlp.gate_proj.weight": Q.Q4_K, "mlp.up_proj.weight": Q.Q4_K,
         "mlp.down_proj.weight": Q.Q6_K, "embed_tokens.weight": Q.Q6_K}


def _held(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


@pytest.fixture(scope="module")
def kquant_gguf(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("kquant") / "tiny-q4_k_m.gguf")
    stored = write_llama(path, hf_weights(seed=1), MIXED, k_scale=None)  # the weights quantized, not random
    return path, stored


def test_kquant_model_tracks_the_dequantized_float32_model(kquant_gguf):
    from transformers import AutoModelForCausalLM

    path, _ = kquant_gguf
    packed = LLM(path, dtype="float32", quantization="gguf", num_kv_blocks=64, show_progress=False)
    model = packed.engine.runner.model
    int4 = [m for m in model.modules() if isinstance(m, Int4Linear)]
    kq = [m for m in model.modules() if isinstance(m, KQuantLinear)]
    assert len(int4) == TINY["layers"] and len(kq) == 3 * TINY["layers"]  # gate_up; qkv (Q4_K + Q6_K), o, down
    assert sorted(m.block for m in kq[:3]) == [16, 16, 32]
    for m in int4:  # nibbles + float32 scale and offset per 32: no dequantized copy
        assert _held(m) == m.out_features * m.in_features * (0.5 + 8 / 32) and m.dense_packed is None
    for m in kq:  # one byte a weight + float32 scale and offset per sub-block
        assert _held(m) == m.out_features * m.in_features * (1 + 8 / m.block)
    dense = LLM(path, dtype="float32", quantization=None, num_kv_blocks=64, show_progress=False)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, TINY["vocab"]) for _ in range(rng.randint(2, 40))] for _ in range(6)]
    lp_params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    for x, y in zip(packed.generate(prompts, lp_params), dense.generate(prompts, lp_params), strict=True):
        lx, ly = ([e[t].logprob for e, t in zip(o.prompt_logprobs[1:], o.prompt_token_ids[1:])] for o in (x, y))
        diff = (torch.tensor(lx) - torch.tensor(ly)).abs()
        assert diff.mean() < 0.01 * torch.tensor(ly).abs().mean() and diff.max() < MARGIN
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                               dtype=torch.float32).eval()
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    for prompt, out in zip(prompts, packed.generate(prompts, params), strict=True):
        ids = out.outputs[0].token_ids
        logits = reference_logits(ref, prompt, ids)
        for step, token in enumerate(ids):
            top = logits[step].topk(2)
            if token != int(top.indices[0]):
                assert token == int(top.indices[1]) and float(top.values[0] - top.values[1]) < MARGIN, step


@pytest.fixture(scope="module")
def q4_k_gguf(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("q4k") / "tiny-q4_k.gguf")
    write_llama(path, hf_weights(seed=2), {"proj.weight": Q.Q4_K}, k_scale=1e-3)
    return path


def test_q4_k_model_greedy_equals_transformers(q4_k_gguf):
    """Q4_K on the 4-bit path holds the stored weights exactly: float32 greedy tokens are transformers' own."""
    from transformers import AutoModelForCausalLM

    packed = LLM(q4_k_gguf, dtype="float32", quantization="gguf", num_kv_blocks=64, show_progress=False)
    assert len([m for m in packed.engine.runner.model.modules() if isinstance(m, Int4Linear)]) == 4 * TINY["layers"]
    ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(q4_k_gguf), gguf_file=os.path.basename(q4_k_gguf),
                                               dtype=torch.float32).eval()
    rng = random.Random(1)
    prompts = [[rng.randrange(3, TINY["vocab"]) for _ in range(rng.randint(2, 30))] for _ in range(4)]
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    for prompt, out in zip(prompts, packed.generate(prompts, params), strict=True):
        assert_greedy_matches(ref, prompt, out.outputs[0].token_ids)


def test_weights_memory_packed_keeps_no_dequantized_copy(q4_k_gguf):
    options = dict(dtype="bfloat16", quantization="gguf", num_kv_blocks=64, show_progress=False)
    default = LLM(q4_k_gguf, **options)
    packed = LLM(q4_k_gguf, weights_memory="packed", **options)
    deterministic = LLM(q4_k_gguf, deterministic=True, **options)
    for m in (m for m in default.engine.runner.model.modules() if isinstance(m, Int4Linear)):
        assert m.dense_packed is not None or m.dense.numel()  # the bf16 copy for prompts and > 16 rows
        assert m.int4pack.numel() and not m.codes.numel()
    layers = [m for m in packed.engine.runner.model.modules() if isinstance(m, Int4Linear)]
    assert len(layers) == 4 * TINY["layers"]
    for m in layers:
        assert m.dense_packed is None and not m.dense.numel() and not m.int4pack.numel()
        assert _held(m) == m.out_features * m.in_features * 0.75
    rng = random.Random(2)
    prompts = [[rng.randrange(3, TINY["vocab"]) for _ in range(rng.randint(2, 30))] for _ in range(20)]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=1)
    # one kernel for every row, as deterministic: the same tokens and logprobs, and batch-invariant
    for x, y in zip(packed.generate(prompts, params), deterministic.generate(prompts, params), strict=True):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        assert [e[t].logprob for e, t in zip(x.outputs[0].logprobs, x.outputs[0].token_ids)] == \
            [e[t].logprob for e, t in zip(y.outputs[0].logprobs, y.outputs[0].token_ids)]
    alone = packed.generate(prompts[:1], params)[0]
    assert alone.outputs[0].token_ids == packed.generate(prompts, params)[0].outputs[0].token_ids


def test_kquant_layers_keep_a_bf16_copy_by_default_and_none_when_packed(kquant_gguf):
    path, _ = kquant_gguf
    options = dict(dtype="bfloat16", quantization="gguf", num_kv_blocks=64, show_progress=False)
    default = LLM(path, **options)
    packed = LLM(path, weights_memory="packed", **options)
    by_default = [m for m in default.engine.runner.model.modules() if isinstance(m, KQuantLinear)]
    assert len(by_default) == 3 * TINY["layers"]
    for m in by_default:  # prompt rows and steps of > 16 generated rows: oneDNN on the copy
        assert m.by_role and (m.dense_packed is not None or m.dense.numel())
    for m in (m for m in packed.engine.runner.model.modules() if isinstance(m, (KQuantLinear, Int4Linear))):
        per_weight = 0.75 if isinstance(m, Int4Linear) else 1 + 8 / m.block
        assert m.dense_packed is None and not m.dense.numel()
        assert _held(m) == m.out_features * m.in_features * per_weight
    rng = random.Random(3)
    prompts = [[rng.randrange(3, TINY["vocab"]) for _ in range(rng.randint(2, 30))] for _ in range(20)]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    outs = [[o.outputs[0].token_ids for o in llm.generate(prompts, params)] for llm in (default, packed)]
    same = sum(x == y for x, y in zip(*outs, strict=True))
    assert same >= 15, f"only {same} of 20 greedy runs agree between the bf16 copy and the packed kernels"
    # packed: one kernel for every row, so a request alone gives the tokens it gave in the batch of 20
    assert packed.generate(prompts[:1], params)[0].outputs[0].token_ids == outs[1][0]


def test_weights_memory_option():
    import argparse

    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    assert EngineArgs.from_cli_args(parser.parse_args([])).weights_memory == "auto"
    assert EngineArgs.from_cli_args(parser.parse_args(["--weights-memory", "packed"])).weights_memory == "packed"
    with pytest.raises(ValueError, match="weights_memory must be one of"):
        EngineArgs(weights_memory="tiny")


@pytest.mark.parametrize("kind", K_QUANTS)
def test_kquant_quantizer_round_trips_through_gguf(kind):
    """The bench's requantizer writes gguf-py's layout: its blocks dequantize (by gguf) to the weights."""
    from pagoda.quantization.kquant_quantizer import QUANTIZERS

    w = np.random.default_rng(0).standard_normal((24, 512)).astype(np.float32) * 0.05
    data = QUANTIZERS[kind](w)
    assert data.shape == (24, 2 * GGML_QUANT_SIZES[kind][1]) and data.dtype == np.uint8
    codes, _, _ = unpack_kquant(kind, data, w.shape)
    assert int(codes.max()) == {Q.Q4_K: 15, Q.Q5_K: 31, Q.Q6_K: 63}[kind]  # the whole code range is used
    back = quants.dequantize(data, kind).reshape(w.shape)
    assert np.linalg.norm(back - w) / np.linalg.norm(w) < {Q.Q4_K: 0.12, Q.Q5_K: 0.06, Q.Q6_K: 0.03}[kind]
