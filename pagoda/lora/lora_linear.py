"""The low-rank delta of one linear layer, for the adapters in the engine's slots.

An adapter's A and B land in this rank's layout through the base layer's own ``weight_loader``
(the shard maths of fused QKV / gate-up and of tensor parallelism live there): for a
column-parallel layer A is whole and B is split like the weight's rows; for a row-parallel one A
is split like the weight's columns and B is whole (its partial delta is summed by the layer's
all-reduce with the base product). The sub-modules of a fused layer (q, k, v) stack along the
rank: A is [parts * r_pad, in] and B [out, parts * r_pad] is zero outside each part's block, so
one shrink and one expand cover the fused output. r_pad rounds ``max_lora_rank`` up to 16, so every
adapter fits the same slot; the kernel reads only an adapter's own rank (rounded up to 16) of each
block, and the zero padding it skips would have added exact zeros.

Slots are stacked: A [slots, width, in] and B transposed [slots, width, out]. A step's rows name
their slot (``LoRABatch``); one call per layer (``pagoda::lora_add_``, Punica's grouped shrink and
expand in one kernel) groups the rows by slot and adds each row's delta to the base output in place.

Batch invariance: the kernel's shrink is the fixed-order dot product of ``invariant_linear`` and its
expand one float32 FMA chain per output, so a row's delta depends on the row and its adapter only,
never on the other rows. Where the kernel does not run (no AVX-512 BF16, another device) plain
matmuls per slot take over, without that promise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from pagoda.kernels import cpu_kernels
from pagoda.layers.linear import (
    LinearBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    WeightLoader,
)
from pagoda.lora.peft_adapter import LoRALoadError

RANK_BLOCK = 16  # the kernel's rank granularity


@dataclass
class LoRAWeights:
    """One adapter's A [width, in] and B transposed [width, out] for one layer on this rank, in the
    model dtype."""

    a: torch.Tensor
    bt: torch.Tensor
    rank: int  # the adapter's rank here, rounded up to RANK_BLOCK: A and B are zero past it in each part's block


@dataclass
class LoRABatch:
    """The step's slot of each row, shared by every LoRA layer of the model (set by ``LoRAManager``):
    ``row_slots`` int64 [rows], negative for a row of the base model; None when no row of the step
    uses an adapter."""

    row_slots: torch.Tensor | None = None

    def set_rows(self, row_slots: list[int], device: torch.device | None = None) -> None:
        """The step's slot of each row (negative: no adapter)."""
        if all(slot < 0 for slot in row_slots):
            self.row_slots = None
        else:
            self.row_slots = torch.tensor(row_slots, dtype=torch.int64, device=device)

    def clear(self) -> None:
        self.row_slots = None


class LoRALinear:
    """Attached to a base linear (dense or packed) as ``layer.lora``; its forward calls it with the
    input and the base output (before any all-reduce) and gets the output with each row's delta."""

    def __init__(self, layer: nn.Module, batch: LoRABatch, num_slots: int, max_rank: int,
                 dtype: torch.dtype) -> None:
        # a packed layer keeps the loader of the layer it replaced; that layer knows the shards
        loader = getattr(layer, "base_loader", None) or getattr(layer, "weight_loader", None)
        base = getattr(loader, "__self__", None)
        if loader is None or not isinstance(base, LinearBase):
            raise TypeError(f"{type(layer).__name__} has no sharded weight loader to load LoRA weights with")
        self.base: LinearBase = base
        self.loader: WeightLoader = loader
        self.batch = batch
        self.dtype = dtype
        self.row_parallel = isinstance(base, RowParallelLinear)
        tp = base.tp.size
        if isinstance(base, QKVParallelLinear):
            kv_full = base.num_kv_heads * tp // base.kv_replicas * base.head_dim
            self.parts: dict[object, int] = {"q": base.num_heads * base.head_dim * tp, "k": kv_full, "v": kv_full}
            local = [base.num_heads * base.head_dim, base.num_kv_heads * base.head_dim, base.num_kv_heads * base.head_dim]
        elif isinstance(base, MergedColumnParallelLinear):
            self.parts = dict(enumerate(base.output_sizes))
            local = [size // tp for size in base.output_sizes]
        else:
            self.parts = {None: base.out_features * (1 if self.row_parallel else tp)}
            local = [base.out_features]
        self.in_full = base.in_features * (tp if self.row_parallel else 1)
        self.r_pad = -(-max_rank // RANK_BLOCK) * RANK_BLOCK
        width = len(self.parts) * self.r_pad
        # each part's outputs on this rank, to read only its block of the rank
        bounds = [0, *itertools.accumulate(local)]
        self.part_outs = bounds if bounds[-1] == base.out_features else [0, base.out_features]
        device = next(iter(layer.buffers()), next(iter(layer.parameters()), torch.empty(0))).device
        self.a = torch.zeros(num_slots, width, base.in_features, dtype=dtype, device=device)
        self.bt = torch.zeros(num_slots, width, base.out_features, dtype=dtype, device=device)
        self.ranks = torch.zeros(num_slots, dtype=torch.int64)  # per slot: the kernel skips the zero ranks

    def shard(self, name: str, parts: dict[object, tuple[torch.Tensor, torch.Tensor]]) -> LoRAWeights:
        """This rank's stacked A and B from the adapter's full float32 (A, scaled B) per part."""
        r_pad = self.r_pad
        width = len(self.parts) * r_pad
        for shard_id, (a, b) in parts.items():
            if a.shape[1] != self.in_full or b.shape[0] != self.parts[shard_id] or a.shape[0] > r_pad:
                part = "" if shard_id is None else f" (part {shard_id!r})"
                raise LoRALoadError(f"LoRA weights of {name}{part} are A {tuple(a.shape)}, B {tuple(b.shape)}: "
                                    f"the model's layer takes {self.in_full} inputs to {self.parts[shard_id]} "
                                    f"outputs, rank at most {r_pad}")
        base = self.base
        if self.row_parallel:
            ((a, b),) = parts.values()
            a_full = torch.zeros(r_pad, self.in_full)
            a_full[: a.shape[0]] = a
            a_rank = torch.zeros(r_pad, base.in_features)
            self.loader(nn.Parameter(a_rank, requires_grad=False), a_full, None)
            b_rank = torch.zeros(b.shape[0], r_pad)
            b_rank[:, : b.shape[1]] = b
        else:
            a_rank = torch.zeros(width, self.in_full)
            b_rank = torch.zeros(base.out_features, width)
            for i, shard_id in enumerate(self.parts):
                if shard_id not in parts:
                    continue  # a part the adapter does not target: zero
                a, b = parts[shard_id]
                a_rank[i * r_pad: i * r_pad + a.shape[0]] = a
                b_full = torch.zeros(b.shape[0], width)
                b_full[:, i * r_pad: i * r_pad + b.shape[1]] = b
                self.loader(nn.Parameter(b_rank, requires_grad=False), b_full, shard_id)
        rank = -(-max(a.shape[0] for a, _ in parts.values()) // RANK_BLOCK) * RANK_BLOCK
        return LoRAWeights(a_rank.to(self.dtype).contiguous(), b_rank.t().to(self.dtype).contiguous(), rank)

    def set_slot(self, slot: int, weights: LoRAWeights | None) -> None:
        """Copies an adapter's weights (host memory) into a slot; None empties it."""
        if weights is None:
            self.a[slot].zero_()
            self.bt[slot].zero_()
            self.ranks[slot] = 0
        else:
            self.a[slot].copy_(weights.a)
            self.bt[slot].copy_(weights.bt)
            self.ranks[slot] = weights.rank

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        row_slots = self.batch.row_slots
        if row_slots is None:
            return y
        shape = y.shape
        x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, shape[-1])
        if _kernel_runs(x, y):
            torch.ops.pagoda.lora_add_(y, x if x.stride(-1) == 1 else x.contiguous(), self.a, self.bt, row_slots,
                                       self.part_outs, self.ranks)
        else:  # one shrink and one expand per slot of the step
            for slot in row_slots[row_slots >= 0].unique().tolist():
                rows = (row_slots == slot).nonzero().squeeze(1)
                y.index_add_(0, rows, (x.index_select(0, rows) @ self.a[slot].T) @ self.bt[slot])
        return y.view(shape)


def _kernel_runs(x: torch.Tensor, y: torch.Tensor) -> bool:
    lanes = 32 if y.dtype == torch.bfloat16 else 16
    return (y.is_cpu and x.dtype == y.dtype and y.dtype in (torch.float32, torch.bfloat16) and y.stride(-1) == 1
            and x.shape[-1] % lanes == 0 and cpu_kernels.invariant_linear_available())
