"""GGUF Q8_0 kept as stored on the int8 VNNI path (activations quantized per block of 32, as llama.cpp does):
the kernel against a PyTorch reference (bitwise), batch invariance (bitwise), then a whole GGUF model against the
dequantized float32 model and transformers."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import reference_logits
from tiny_gguf import TINY, hf_weights, write_llama

from pagoda import LLM, SamplingParams
from pagoda.kernels import cpu_kernels
from pagoda.layers.linear import ColumnParallelLinear
from pagoda.quantization.gguf_q8 import Q8Linear, pack_for_kernel, reference_q8_linear, unpack_q8_0

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)
BATCH = st.sampled_from([1, 2, 3, 4, 5, 15, 16, 17, 63, 64, 65, 100, 130])


@pytest.fixture(scope="module", autouse=True)
def kernels() -> None:
    assert cpu_kernels.available(), "the CPU kernels must build on the CI machine"
    assert torch.ops.pagoda.int8_block_linear_available(), "this CPU has AVX-512 VNNI: the Q8_0 kernel must run"


def _q8_layer(out_features: int, in_features: int, seed: int) -> tuple[Q8Linear, torch.Tensor]:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((out_features, in_features)) * 0.05).astype(np.float32)
    layer = Q8Linear(ColumnParallelLinear(in_features, out_features))
    data = quants.quantize(w, Q.Q8_0)
    layer.load_quantized(Q.Q8_0, data, (out_features, in_features), None)
    layer.finalize()
    return layer, torch.from_numpy(quants.dequantize(data, Q.Q8_0).reshape(out_features, in_features).copy())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("m", "n", "k"), [(1, 40, 64), (5, 100, 96), (4, 64, 256), (9, 17, 32)])
def test_kernel_matches_reference_bitwise(dtype, m, n, k):
    layer, dequantized = _q8_layer(n, k, seed=m + n)
    codes, scales = layer.unpacked()
    assert torch.equal((codes.float().view(n, -1, 32) * scales[:, :, None]).view(n, k), dequantized)  # as stored
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k)).to(dtype)
    y = layer(x)
    assert y.dtype == dtype and y.shape == (m, n)
    ref = reference_q8_linear(x, codes, scales)
    assert torch.equal(y, ref.to(dtype))
    exact = x.float() @ dequantized.t()  # per-block int8 activations: well under a percent
    assert (ref - exact).norm() / exact.norm() < 0.01


@given(m=BATCH, seed=st.integers(0, 2**16))
@SETTINGS
def test_q8_linear_is_batch_invariant(m, seed):
    layer, _ = _q8_layer(200, 256, seed % 5)
    x = torch.randn(m, 256, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    full = layer(x)
    for r in {0, m // 2, m - 1}:
        assert torch.equal(layer(x[r:r + 1].clone())[0], full[r]), f"row {r} of {m} differs from the row alone"
    for k in (1, 4, 5, 16, 17, 64, 65):
        if k < m:
            assert torch.equal(layer(x[:k].clone()), full[:k]), f"the first {k} rows differ"


def test_pack_layout_round_trips():
    codes = torch.randint(-128, 128, (40, 64), dtype=torch.int8)
    scales = torch.rand(40, 2)
    packed, s, corr = pack_for_kernel(codes, scales)
    assert packed.shape == (3, 16, 16, 4) and s.shape == corr.shape == (3, 2, 16)
    assert torch.equal(packed[1, 5, 7], codes[16 + 7, 20:24])  # vector 1, k-quad 5, output 7
    assert int(corr[0, 1, 3]) == 128 * int(codes[3, 32:].long().sum())


# The activations are int8 per block of 32 (as in llama.cpp), so logits differ from the float32 model's by
# about 0.2% (measured: mean |delta logprob| 0.009 on this model): a greedy token may differ from the float32
# argmax only where the float32 top two are closer than this margin.
MARGIN = 0.1


@pytest.fixture(scope="module")
def q8_gguf(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("q8") / "tiny-q8.gguf")
    stored = write_llama(path, hf_weights(seed=1), {}, default_type=Q.Q8_0)
    return path, stored


def test_unpack_reproduces_the_dequantized_weights(q8_gguf):
    _, stored = q8_gguf
    kind, packed, dequantized = stored["model.layers.0.mlp.down_proj.weight"]
    assert kind == Q.Q8_0
    codes, scales = unpack_q8_0(packed, dequantized.shape)
    w = codes.float() * scales.repeat_interleave(32, 1)
    assert torch.equal(w, torch.from_numpy(dequantized))


def test_packed_model_tracks_the_dequantized_float32_model(q8_gguf):
    from transformers import AutoModelForCausalLM

    path, _ = q8_gguf
    packed = LLM(path, dtype="float32", quantization="gguf", num_kv_blocks=64, show_progress=False)
    layers = [m for m in packed.engine.runner.model.modules() if isinstance(m, Q8Linear)]
    assert len(layers) == 4 * TINY["layers"]  # qkv, o, gate_up, down per layer
    for m in layers:  # codes, a float32 scale and an int32 correction per block of 32: no dequantized copy
        held = sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
        assert held == m.out_features * m.in_features * (1 + 8 / 32)
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
