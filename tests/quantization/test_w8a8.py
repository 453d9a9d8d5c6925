"""quantization="w8a8": int8 weights per output channel, int8 activations per token, exact int32 sums and one
float epilogue: the kernels against a PyTorch reference (bitwise), batch invariance (bitwise), a whole model
against its dense self, and the no-VNNI fallback."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pagoda import LLM, SamplingParams
from pagoda.kernels import cpu_kernels
from pagoda.layers.embedding import ParallelLMHead
from pagoda.layers.linear import ColumnParallelLinear, RowParallelLinear
from pagoda.quantization import w8a8
from pagoda.quantization.w8a8 import Int8Linear, Int8LMHead, quantize_rows

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True)
BATCH = st.sampled_from([1, 2, 3, 5, 15, 16, 17, 31, 63, 64, 65, 100, 130])


@pytest.fixture(scope="module", autouse=True)
def kernels() -> None:
    assert cpu_kernels.available(), "the CPU kernels must build on the CI machine"


def _dense(cls, in_f: int, out_f: int, dtype: torch.dtype, bias: bool = True, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    layer = cls(in_f, out_f, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_f, in_f, generator=g) * torch.linspace(0.01, 3, out_f)[:, None])
        if bias:
            layer.bias.copy_(torch.randn(out_f, generator=g))
    return layer.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_quantization_kernel_matches_torch_reference(dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(37, 96, generator=g) * torch.logspace(-3, 2, 37)[:, None]).to(dtype)
    x[5] = 0  # a zero row: scale 1, codes 0
    codes, scale = torch.ops.pagoda.quantize_rows_int8(x)
    ref_codes, ref_scale = quantize_rows(x)
    assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale)
    assert codes.abs().amax(1)[torch.arange(37) != 5].eq(127).all()  # each row's max hits 127
    assert (codes.float() * scale - x.float()).abs().le(scale * 0.5001).all()  # half a step
    col = torch.rand(96, generator=g) * 4 + 0.1  # SmoothQuant's per-channel 1 / s, applied before quantizing
    codes, scale = torch.ops.pagoda.quantize_rows_int8(x, col)
    ref_codes, ref_scale = quantize_rows(x.float() * col)
    assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale)


@pytest.mark.parametrize("cls", [ColumnParallelLinear, RowParallelLinear])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_linear_is_exact_integer_product_then_one_epilogue(cls, dtype):
    dense = _dense(cls, 96, 40, dtype)
    layer = Int8Linear.from_dense(dense)
    assert layer.weight.dtype == torch.int8 and layer.weight.shape == (40, 96)
    x = torch.randn(2, 7, 96, generator=torch.Generator().manual_seed(2)).to(dtype)  # any leading shape
    y = layer(x)
    assert y.shape == (2, 7, 40) and y.dtype == dtype
    xq, xs = quantize_rows(x.reshape(-1, 96))
    acc = xq.long() @ layer.weight.long().t()  # exact, in int64
    ref = acc.float() * (xs * layer.weight_scale)
    if dense.bias is not None and cls is ColumnParallelLinear:  # fused: one fma (the product is exact in float64)
        ref = (acc.double() * (xs * layer.weight_scale).double() + dense.bias.double()).float()
    elif dense.bias is not None:  # row-parallel: after the all-reduce
        ref = ref.to(dtype).float() + dense.bias.float()
    assert torch.equal(y.reshape(-1, 40), ref.to(dtype))
    # and close to the dense layer: int8 on both sides, about a percent
    exact = dense(x).float()
    assert (y.float() - exact).norm() / exact.norm() < 0.02


@given(m=BATCH, seed=st.integers(0, 2**16))
@SETTINGS
def test_int8_linear_is_batch_invariant(m, seed):
    layer = Int8Linear.from_dense(_dense(ColumnParallelLinear, 576, 960, torch.bfloat16, seed=seed % 7))
    x = torch.randn(m, 576, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    full = layer(x)
    for r in {0, m // 2, m - 1}:
        assert torch.equal(layer(x[r:r + 1].clone())[0], full[r]), f"row {r} of {m} differs from the row alone"
    for k in (1, 16, 17, 64, 65):
        if k < m:
            assert torch.equal(layer(x[:k].clone()), full[:k]), f"the first {k} rows differ"


def _lm_head(vocab: int, hidden: int, seed: int = 0) -> ParallelLMHead:
    head = ParallelLMHead(vocab, hidden)
    g = torch.Generator().manual_seed(seed)
    head.weight.data = (torch.randn(vocab, hidden, generator=g) * 0.05).to(torch.bfloat16)
    return head


def test_int8_lm_head_is_two_digit_integer_products():
    """Weight rows int8 per row; each hidden row as its codes plus its rounding error's codes: float32 logits
    equal to the exact integer products, and closer to the dense head than one row of codes."""
    head = _lm_head(100, 96)
    x = torch.randn(9, 96, generator=torch.Generator().manual_seed(1))
    x[:, 3] *= 30  # an outlier channel, as after a final norm
    x = x.to(torch.bfloat16)
    int8 = Int8LMHead(head, x.float().abs().amax(0))
    logits = int8.compute_logits(x)
    assert logits.shape == (9, 100) and logits.dtype == torch.float32 and int8.inv_smooth is not None
    xs = x.float() * int8.inv_smooth  # smoothed
    q1, s1 = quantize_rows(xs)
    q2, s2 = quantize_rows(xs - q1.float() * s1)
    w = int8.weight.long().t()  # exact, in int64
    ws = int8.weight_scale
    assert torch.equal(logits, (q1.long() @ w).float() * (s1 * ws) + (q2.long() @ w).float() * (s2 * ws))
    dense = head.compute_logits(x)
    one_digit = (q1.long() @ w).float() * (s1 * ws)
    err = (logits - dense).norm() / dense.norm()
    assert err < 0.01 and err < (one_digit - dense).norm() / dense.norm()


@given(m=BATCH, seed=st.integers(0, 2**16))
@SETTINGS
def test_int8_lm_head_is_batch_invariant(m, seed):
    int8 = Int8LMHead(_lm_head(1000, 192, seed % 5))
    x = torch.randn(m, 192, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    full = int8.compute_logits(x)
    for r in {0, m // 2, m - 1}:
        assert torch.equal(int8.compute_logits(x[r:r + 1].clone())[0], full[r]), f"row {r} of {m} differs"


def test_without_vnni_the_model_stays_dense_with_a_warning(tiny_model_factory, monkeypatch):
    monkeypatch.setattr(w8a8, "cpu_has_vnni", lambda: False)
    with pytest.warns(UserWarning, match="no int8 dot-product instructions.*keeping the dense weights"):
        llm = LLM(tiny_model_factory(), dtype="float32", quantization="w8a8", num_kv_blocks=16, show_progress=False)
    model = llm.engine.runner.model
    assert not any(isinstance(m, (Int8Linear, Int8LMHead)) for m in model.modules())
    assert llm.generate("Hello", SamplingParams(temperature=0, max_tokens=3))[0].outputs[0].token_ids


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiny_model_w8a8_tracks_dense(tiny_model_factory, dtype):
    """Every layer matrix and the LM head become int8 (a quarter of the float32 bytes); the tied embedding
    stays dense; prompt logprobs stay close."""
    path = tiny_model_factory()
    prompt = "The quick brown fox jumps over the lazy dog. Paged attention stores keys and values."
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    runs = {q: LLM(path, dtype=dtype, quantization=q, num_kv_blocks=32, show_progress=False) for q in (None, "w8a8")}
    model = runs["w8a8"].engine.runner.model
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 2 * 4  # qkv, o, gate_up, down in each of 2 layers
    assert all(m.weight.dtype == torch.int8 for m in layers)
    assert all(m.inv_smooth is not None for m in layers)  # smoothed by the calibration forward
    assert isinstance(model.lm_head, Int8LMHead) and model.lm_head.inv_smooth is not None
    assert model.model.embed_tokens.weight.dtype == runs[None].engine.runner.model.model.embed_tokens.weight.dtype
    dense_lp = torch.tensor(_prompt_logprobs(runs[None], prompt, params))
    int8_lp = torch.tensor(_prompt_logprobs(runs["w8a8"], prompt, params))
    diff = (int8_lp - dense_lp).abs()
    print("w8a8 vs dense prompt logprobs:", diff.mean().item(), dense_lp.abs().mean().item())
    assert diff.mean() < 0.03 * dense_lp.abs().mean()


def _prompt_logprobs(llm, prompt, params) -> list[float]:
    out = llm.generate(prompt, params)[0]
    ids = out.prompt_token_ids
    return [entry[token].logprob for entry, token in zip(out.prompt_logprobs[1:], ids[1:])]


def test_smoothing_moves_an_outlier_channel_into_the_weight():
    """Inputs with one channel 50x the others: per-token int8 loses the small channels unless the layer is
    smoothed (SmoothQuant); the smoothed layer's error against the dense product is several times smaller, and
    its effective weight is still close to the dense one."""
    dense = _dense(ColumnParallelLinear, 96, 64, torch.float32, bias=False)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 96, generator=g)
    x[:, 7] *= 50
    plain = Int8Linear.from_dense(dense)
    smooth = Int8Linear.from_dense(dense, x.abs().amax(0))
    exact = dense(x)
    err = {name: ((layer(x) - exact).norm() / exact.norm()).item() for name, layer in
           (("plain", plain), ("smooth", smooth))}
    assert err["smooth"] < err["plain"] / 3, err
    w = dense.weight.detach()
    assert (smooth.dequantized_weight() - w).norm() / w.norm() < 0.02
