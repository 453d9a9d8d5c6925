"""Fused add + RMSNorm, RoPE (with llama3 scaling), SiLU-and-mul and the grammar bitmask apply against
their torch references (Triton's interpreter on CPU; compiled on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_device import DEVICE

from pagoda.config import RopeScaling
from pagoda.kernels.triton.add_rms_norm import add_rms_norm_, add_rms_norm_reference
from pagoda.kernels.triton.rotary import rotary_embedding_, rotary_embedding_reference
from pagoda.kernels.triton.silu_and_mul import silu_and_mul, silu_and_mul_reference
from pagoda.kernels.triton.token_bitmask import apply_token_bitmask_, apply_token_bitmask_reference
from pagoda.layers.rotary import RotaryEmbedding
from pagoda.structured.token_bitmask import apply_token_bitmask_ as numpy_apply_bitmask

DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [64, 96])
def test_add_rms_norm(dtype, hidden):
    g = torch.Generator().manual_seed(0)
    x, r = (torch.randn(5, hidden, generator=g).to(dtype) for _ in range(2))
    w = (1 + 0.1 * torch.randn(hidden, generator=g)).to(dtype)
    ref_out, ref_sum = add_rms_norm_reference(x, r, w, 1e-6)
    xd, rd = x.to(DEVICE), r.to(DEVICE)
    out32 = torch.empty(5, hidden, device=DEVICE)
    add_rms_norm_(xd.clone(), rd.clone(), w.to(DEVICE), 1e-6, out=out32)
    assert (out32.cpu() - ref_out).abs().max().item() < 1e-5
    out, summed = add_rms_norm_(xd, rd, w.to(DEVICE), 1e-6)  # in place
    assert out.data_ptr() == xd.data_ptr() and summed.data_ptr() == rd.data_ptr()
    assert torch.equal(summed.cpu(), ref_sum)
    torch.testing.assert_close(out.cpu(), ref_out.to(dtype), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scaling", [None, RopeScaling("llama3", 8.0, 1.0, 4.0, 64)])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rotary_in_place(dtype, scaling, head_dim):
    rope = RotaryEmbedding(head_dim, 512, 500000.0, scaling)
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(6, (6 + 2 + 2) * head_dim, generator=g).to(dtype)  # q and k as views of a fused output
    q = qkv[:, : 6 * head_dim].view(6, 6, head_dim)
    k = qkv[:, 6 * head_dim: 8 * head_dim].view(6, 2, head_dim)
    positions = torch.tensor([0, 1, 7, 100, 300, 511])
    ref_q = rotary_embedding_reference(positions, q, rope.cos, rope.sin)
    ref_k = rotary_embedding_reference(positions, k, rope.cos, rope.sin)
    qkv_d = qkv.to(DEVICE)
    qd = qkv_d[:, : 6 * head_dim].view(6, 6, head_dim)
    kd = qkv_d[:, 6 * head_dim: 8 * head_dim].view(6, 2, head_dim)
    rotary_embedding_(positions.to(DEVICE), qd, kd, rope.cos.to(DEVICE), rope.sin.to(DEVICE))
    if dtype == torch.float32:
        assert (qd.cpu() - ref_q).abs().max().item() < 1e-5 and (kd.cpu() - ref_k).abs().max().item() < 1e-5
    else:  # computed in float32, rounded once: within one fp16 step of the rounded reference
        torch.testing.assert_close(qd.cpu(), ref_q.half(), atol=1e-5, rtol=1e-3)
        torch.testing.assert_close(kd.cpu(), ref_k.half(), atol=1e-5, rtol=1e-3)
    assert torch.equal(qkv_d[:, 8 * head_dim:].cpu(), qkv[:, 8 * head_dim:])  # v untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype):
    g = torch.Generator().manual_seed(2)
    x = (3 * torch.randn(4, 2 * 200, generator=g)).to(dtype)
    ref = silu_and_mul_reference(x)
    out32 = torch.empty(4, 200, device=DEVICE)
    silu_and_mul(x.to(DEVICE), out32, block=128)  # two column blocks, the second partial
    assert (out32.cpu() - ref).abs().max().item() < 1e-5
    out = silu_and_mul(x.to(DEVICE), block=128)
    assert out.dtype == dtype
    torch.testing.assert_close(out.cpu(), ref.to(dtype), atol=1e-5, rtol=1e-3)


def test_token_bitmask_apply():
    g = torch.Generator().manual_seed(3)
    vocab = 200  # the mask covers 160 ids (5 words): ids past it are banned too
    logits = torch.randn(3, vocab, generator=g)
    bitmask = torch.randint(-(2**31), 2**31 - 1, (3, 5), generator=g, dtype=torch.int64).to(torch.int32)
    bitmask[1] = -1  # all allowed (within the mask)
    bitmask[2] = 0
    bitmask[2, 4] = -(2**31)  # only id 159: the sign bit
    ref = apply_token_bitmask_reference(logits, bitmask)
    out = apply_token_bitmask_(logits.to(DEVICE), bitmask.to(DEVICE), block=64).cpu()
    assert torch.equal(out, ref)
    assert torch.isfinite(out[2]).nonzero().flatten().tolist() == [159]
    assert torch.isfinite(out[1]).sum() == 160
    for row in range(3):  # and the engine's own CPU path agrees
        assert torch.equal(numpy_apply_bitmask(logits[row].clone(), bitmask[row].numpy().astype(np.int32)), ref[row])
