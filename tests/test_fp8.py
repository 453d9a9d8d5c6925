"""quantization="fp8": E4M3 weights per output channel, per-token activation scales, ``torch._scaled_mm``
(which runs on this CPU): numerics against the dequantized weights, then a whole model."""

from __future__ import annotations

import pytest
import torch

from pagoda import LLM, SamplingParams
from pagoda.layers.linear import ColumnParallelLinear, RowParallelLinear
from pagoda.quantization.fp8 import FP8, Fp8Linear, check_fp8_capability, quantize_rows


def _dense(cls, in_f: int, out_f: int, dtype: torch.dtype, bias: bool = True) -> torch.nn.Module:
    g = torch.Generator().manual_seed(0)
    layer = cls(in_f, out_f, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_f, in_f, generator=g) * torch.linspace(0.01, 3, out_f)[:, None])
        if bias:
            layer.bias.copy_(torch.randn(out_f, generator=g))
    return layer.to(dtype)


def test_weight_codes_are_within_e4m3_rounding_per_channel():
    w = torch.randn(32, 64) * torch.logspace(-3, 2, 32)[:, None]  # channels of very different ranges
    codes, scale = quantize_rows(w)
    assert codes.dtype == FP8 and scale.shape == (32, 1)
    assert torch.equal(codes.float().abs().amax(1), torch.full((32,), 448.0))  # each row's max hits E4M3's max
    err = (codes.float() * scale - w).abs()
    assert (err <= w.abs() / 16 + scale * 2**-9).all()  # 3 mantissa bits: half a step, relative 1/16


@pytest.mark.parametrize("cls", [ColumnParallelLinear, RowParallelLinear])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_equals_dequantized_product(cls, dtype):
    dense = _dense(cls, 64, 48, dtype)
    fp8 = Fp8Linear(dense)
    x = torch.randn(2, 5, 64).to(dtype)  # any leading shape
    y = fp8(x)
    assert y.shape == (2, 5, 48) and y.dtype == dtype
    codes, scale = quantize_rows(x.reshape(-1, 64))
    ref = (codes.float() * scale) @ fp8.dequantized_weight().t() + dense.bias.float()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(y.reshape(-1, 48).float(), ref, atol=tol * ref.abs().max().item(), rtol=tol)
    # and close to the dense layer: E4M3 on both sides, a few percent
    exact = dense(x).float()
    assert (y.float() - exact).norm() / exact.norm() < 0.06


def test_capability_below_8_9_is_a_clear_error():
    check_fp8_capability((9, 0))
    check_fp8_capability((8, 9))
    with pytest.raises(ValueError, match=r"compute capability 8\.9 or later.*has 8\.0"):
        check_fp8_capability((8, 0), "NVIDIA A100")


def test_tiny_model_fp8_tracks_dense(tiny_model_factory):
    """Every layer matrix whose shape the scaled matmul takes becomes FP8; prompt logprobs stay close to
    the dense model's."""
    path = tiny_model_factory()
    prompt = "The quick brown fox jumps over the lazy dog."
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0)
    runs = {}
    for quant in (None, "fp8"):
        llm = LLM(path, dtype="float32", quantization=quant, num_kv_blocks=32, show_progress=False)
        runs[quant] = llm
    model = runs["fp8"].engine.runner.model
    fp8_layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    assert len(fp8_layers) == 2 * 4  # qkv, o, gate_up, down in each of 2 layers
    dense_lp = _prompt_logprobs(runs[None], prompt, params)
    fp8_lp = _prompt_logprobs(runs["fp8"], prompt, params)
    diff = (torch.tensor(fp8_lp) - torch.tensor(dense_lp)).abs()
    print("fp8 vs dense prompt logprobs:", diff.mean().item(), torch.tensor(dense_lp).abs().mean().item())
    assert diff.mean() < 0.05 * torch.tensor(dense_lp).abs().mean()


def _prompt_logprobs(llm, prompt, params) -> list[float]:
    out = llm.generate(prompt, params)[0]
    ids = out.prompt_token_ids
    return [entry[token].logprob for entry, token in zip(out.prompt_logprobs[1:], ids[1:])]
