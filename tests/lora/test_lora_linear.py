"""The batched low-rank delta: tensor-parallel shards through the layers' own loaders, and a row's
delta bitwise the same alone or among rows of other adapters."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pagoda.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagoda.lora.lora_linear import LoRABatch, LoRALinear
from pagoda.parallel import TensorParallel


def _ab(r: int, in_features: int, out_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, in_features, generator=g), torch.randn(out_features, r, generator=g) * 0.1


def _delta(layer, parts, x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    rows = LoRABatch()
    rows.set_rows([0] * x.shape[0])
    lora = LoRALinear(layer, rows, 1, 16, dtype)
    lora.set_slot(0, lora.shard("layer", parts))
    out = layer.out_features
    return lora(x.to(dtype), torch.zeros(x.shape[0], out, dtype=dtype))


@pytest.mark.parametrize("kv_heads", [4, 1])  # KV heads split, and replicated across the two ranks
def test_qkv_shards_are_slices_of_the_full_delta(kv_heads):
    hidden, d, heads = 64, 16, 4
    parts = {"q": _ab(4, hidden, heads * d, 1), "v": _ab(8, hidden, kv_heads * d, 2)}  # k not targeted
    x = torch.randn(5, hidden)
    full = {s: x @ a.T @ b.T for s, (a, b) in parts.items()}
    for rank in (0, 1):
        layer = QKVParallelLinear(hidden, d, heads, kv_heads, tp=TensorParallel(rank, 2))
        y = _delta(layer, parts, x)
        q, kv = layer.num_heads * d, layer.num_kv_heads * d
        kv_rank = rank // layer.kv_replicas
        torch.testing.assert_close(y[:, :q], full["q"][:, rank * q:(rank + 1) * q])
        torch.testing.assert_close(y[:, q:q + kv], torch.zeros(5, kv))
        torch.testing.assert_close(y[:, q + kv:], full["v"][:, kv_rank * kv:(kv_rank + 1) * kv])


def test_gate_up_and_row_parallel_shards():
    hidden, inter = 64, 128
    parts = {0: _ab(8, hidden, inter, 3), 1: _ab(8, hidden, inter, 4)}
    down = {None: _ab(16, inter, hidden, 5)}
    x, h = torch.randn(3, hidden), torch.randn(3, inter)
    summed = torch.zeros(3, hidden)
    for rank in (0, 1):
        tp = TensorParallel(rank, 2)
        y = _delta(MergedColumnParallelLinear(hidden, [inter, inter], tp=tp), parts, x)
        half = inter // 2
        for i in (0, 1):
            a, b = parts[i]
            torch.testing.assert_close(y[:, i * half:(i + 1) * half], (x @ a.T @ b.T)[:, rank * half:(rank + 1) * half])
        # row-parallel: each rank's delta on its slice of the input; the all-reduce sums them
        summed += _delta(RowParallelLinear(inter, hidden, tp=tp), down, h[:, rank * 64:(rank + 1) * 64])
    a, b = down[None]
    torch.testing.assert_close(summed, h @ a.T @ b.T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@settings(max_examples=10, deadline=None, derandomize=True)
@given(batch=st.sampled_from([1, 2, 5, 16, 17, 33, 64, 65, 100]), seed=st.integers(0, 2**16))
def test_row_delta_is_batch_invariant(dtype, batch, seed):
    """Each row's output is bitwise the same alone (its slot's group of one) and in a batch whose rows
    are spread over three adapters and the base."""
    hidden, d, heads, kv_heads = 96, 32, 3, 1
    layer = QKVParallelLinear(hidden, d, heads, kv_heads)
    group = LoRABatch()
    lora = LoRALinear(layer, group, 3, 64, dtype)
    for slot, r in enumerate((8, 16, 64)):
        parts = {"q": _ab(r, hidden, heads * d, seed + slot), "k": _ab(r, hidden, kv_heads * d, seed + 7),
                 "v": _ab(r, hidden, kv_heads * d, seed + 9)}
        lora.set_slot(slot, lora.shard("qkv", parts))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, hidden, generator=g).to(dtype)
    base = torch.randn(batch, layer.out_features, generator=g).to(dtype)
    slots = torch.randint(-1, 3, (batch,), generator=g)
    group.set_rows(slots.tolist())
    full = lora(x, base.clone())
    for row in {0, batch // 2, batch - 1}:
        s = int(slots[row])
        group.set_rows([s])
        alone = lora(x[row:row + 1].clone(), base[row:row + 1].clone())
        assert torch.equal(alone[0], full[row]), f"row {row} (slot {s}) of {batch}"
    if (slots >= 0).any():
        assert not torch.equal(full[slots >= 0], base[slots >= 0])
    assert torch.equal(full[slots < 0], base[slots < 0])


@pytest.mark.parametrize("fmt", ["dense", "fp8", "gguf-q4"])
def test_every_weight_format_adds_the_delta(fmt):
    """The hook in each linear type's forward: output with an adapter = output without + x A^T B^T."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    from pagoda.quantization.fp8 import Fp8Linear
    from pagoda.quantization.gguf_int4 import Int4Linear

    hidden, inter = 64, 96
    dense = MergedColumnParallelLinear(hidden, [inter, inter])
    w = torch.randn(2 * inter, hidden) * 0.1
    dense.weight.data.copy_(w)
    layer: torch.nn.Module = dense
    if fmt == "fp8":
        layer = Fp8Linear(dense)
    elif fmt == "gguf-q4":
        layer = Int4Linear(dense, torch.float32)
        for part in (0, 1):
            rows = w[part * inter:(part + 1) * inter].numpy().astype(np.float32)
            layer.load_quantized(Q.Q4_0, quants.quantize(rows, Q.Q4_0), (inter, hidden), part)
        layer.finalize()
    x = torch.randn(7, hidden)
    without = layer(x)
    parts = {0: _ab(8, hidden, inter, 1), 1: _ab(4, hidden, inter, 2)}
    rows = LoRABatch()
    rows.set_rows([0, -1, 0, -1, -1, 0, -1])
    lora = LoRALinear(layer, rows, 1, 16, torch.float32)
    lora.set_slot(0, lora.shard("gate_up", parts))
    layer.lora = lora
    with_lora = layer(x)
    expected = torch.cat([x @ a.T @ b.T for a, b in parts.values()], dim=1)
    rows = [0, 2, 5]
    torch.testing.assert_close(with_lora[rows] - without[rows], expected[rows], atol=1e-5, rtol=1e-4)
    assert torch.equal(with_lora[[1, 3, 4, 6]], without[[1, 3, 4, 6]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 7, 65])
def test_grouped_kernel_matches_float64(dtype, m):
    """``pagoda::lora_add_`` against x A_s^T B_s^T in float64 per row; rows of the base model left
    alone. Reading only each part's block of the rank, and only a slot's own rank of it, gives the
    same bits as reading the whole (zero-padded) rank."""
    from pagoda.kernels import cpu_kernels

    assert cpu_kernels.invariant_linear_available(), "this CPU has AVX-512 BF16: the LoRA kernel must run"
    k, n, block, part_outs = 96, 200, 32, [0, 120, 168, 200]  # q / k / v outputs, a block of 32 ranks each
    ranks = [32, 16, 0]  # per slot (the last is empty)
    g = torch.Generator().manual_seed(m)
    x, y = torch.randn(m, k, generator=g).to(dtype), torch.randn(m, n, generator=g).to(dtype)
    a, bt = torch.zeros(3, 3 * block, k), torch.zeros(3, 3 * block, n)
    for s, r in enumerate(ranks):
        for p in range(3):  # B is zero outside each part's block (as a fused layer's is)
            a[s, p * block:p * block + r] = torch.randn(r, k, generator=g)
            bt[s, p * block:p * block + r, part_outs[p]:part_outs[p + 1]] = torch.randn(
                r, part_outs[p + 1] - part_outs[p], generator=g) * 0.1
    a, bt = a.to(dtype), bt.to(dtype)
    row_slots = torch.randint(-1, 3, (m,), generator=g)
    out, whole = y.clone(), y.clone()
    torch.ops.pagoda.lora_add_(out, x, a, bt, row_slots, part_outs, torch.tensor(ranks))
    torch.ops.pagoda.lora_add_(whole, x, a, bt, row_slots, [0, n], torch.tensor([3 * block] * 3))
    assert torch.equal(out, whole)
    expected = y.double()
    for i, s in enumerate(row_slots.tolist()):
        if s >= 0:
            expected[i] += x[i].double() @ a[s].double().T @ bt[s].double()
    tol = dict(atol=1e-4, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.13, rtol=8e-3)  # one bf16 rounding
    torch.testing.assert_close(out.double(), expected, **tol)
    assert torch.equal(out[row_slots < 0], y[row_slots < 0])
