"""The low-rank delta of one linear layer, for the adapters in the engine's slots.

An adapter's A and B land in this rank's layout through the base layer's own ``weight_loader``
(the shard maths of fused QKV / gate-up and of tensor parallelism live there): for a
column-parallel layer A is whole and B is split like the weight's rows; for a row-parallel one A
is split like the weight's columns and B is whole (its partial delta is summed by the layer's
all-reduce with the base product). The sub-modules of a fused layer (q, k, v) stack along the
rank: A is [parts * r_pad, in] and B [out, parts * r_pad] is zero outside each part's block, so
one shrink and one expand cover the fused output. r_pad rounds the rank up to 32, the fixed-order
kernel's block.

Batch invariance: a row's delta is x_row A^T B^T through ``pagoda.layers.prepacked.linear`` (the
fixed-order kernel in float32, oneDNN's bfloat16 GEMM otherwise: both give a row the same bits at
every row count), added once to the row's base output. It depends on the row and its adapter only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pagoda.layers.linear import (
    LinearBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    WeightLoader,
)
from pagoda.layers.prepacked import linear, prepack_weight
from pagoda.lora.peft_adapter import LoRALoadError

RANK_BLOCK = 32


@dataclass
class LoRAWeights:
    """One adapter's A [width, in] and B [out, width] for one layer on this rank, in the model dtype,
    with oneDNN-packed copies once in a slot (bfloat16 on CPU)."""

    a: torch.Tensor
    b: torch.Tensor
    a_packed: torch.Tensor | None = None
    b_packed: torch.Tensor | None = None


@dataclass
class LoRABatch:
    """The step's rows per slot, shared by every LoRA layer of the model (set by ``LoRAManager``):
    (slot, row indices) pairs; None as indices means every row of the step."""

    groups: list[tuple[int, torch.Tensor | None]]


class LoRALinear:
    """Attached to a base linear (dense or packed) as ``layer.lora``; its forward calls it with the
    input and the base output (before any all-reduce) and gets the output with each row's delta."""

    def __init__(self, layer: nn.Module, batch: LoRABatch, num_slots: int, dtype: torch.dtype) -> None:
        # a packed layer keeps the loader of the layer it replaced; that layer knows the shards
        loader = getattr(layer, "base_loader", None) or getattr(layer, "weight_loader", None)
        base = getattr(loader, "__self__", None)
        if loader is None or not isinstance(base, LinearBase):
            raise TypeError(f"{type(layer).__name__} has no sharded weight loader to load LoRA weights with")
        self.base: LinearBase = base
        self.loader: WeightLoader = loader
        self.batch = batch
        self.dtype = dtype
        self.slots: list[LoRAWeights | None] = [None] * num_slots
        self.row_parallel = isinstance(base, RowParallelLinear)
        if isinstance(base, QKVParallelLinear):
            kv_full = base.num_kv_heads * base.tp.size // base.kv_replicas * base.head_dim
            self.parts: dict[object, int] = {"q": base.num_heads * base.head_dim * base.tp.size,
                                             "k": kv_full, "v": kv_full}
        elif isinstance(base, MergedColumnParallelLinear):
            self.parts = dict(enumerate(base.output_sizes))
        elif self.row_parallel:
            self.parts = {None: base.out_features}
        else:
            self.parts = {None: base.out_features * base.tp.size}
        self.in_full = base.in_features * (base.tp.size if self.row_parallel else 1)

    def shard(self, name: str, parts: dict[object, tuple[torch.Tensor, torch.Tensor]]) -> LoRAWeights:
        """This rank's stacked A and B from the adapter's full float32 (A, scaled B) per part."""
        r_pad = -(-max(a.shape[0] for a, _ in parts.values()) // RANK_BLOCK) * RANK_BLOCK
        width = len(self.parts) * r_pad
        for shard_id, (a, b) in parts.items():
            if a.shape[1] != self.in_full or b.shape[0] != self.parts[shard_id]:
                part = "" if shard_id is None else f" (part {shard_id!r})"
                raise LoRALoadError(f"LoRA weights of {name}{part} are A {tuple(a.shape)}, B {tuple(b.shape)}: "
                                    f"the model's layer takes {self.in_full} inputs to {self.parts[shard_id]} outputs")
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
        return LoRAWeights(a_rank.to(self.dtype).contiguous(), b_rank.to(self.dtype).contiguous())

    def set_slot(self, slot: int, weights: LoRAWeights | None, device: torch.device | None = None) -> None:
        """Copies an adapter's weights (host memory) into a slot; None empties it."""
        if weights is not None:
            a, b = weights.a.to(device), weights.b.to(device)
            weights = LoRAWeights(a, b, prepack_weight(a), prepack_weight(b))
        self.slots[slot] = weights

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, shape = x.reshape(-1, x.shape[-1]), y.shape
        y = y.reshape(-1, shape[-1])
        for slot, rows in self.batch.groups:
            w = self.slots[slot]
            if w is None:
                continue
            xs = x if rows is None else x.index_select(0, rows)
            delta = linear(linear(xs, w.a, None, w.a_packed), w.b, None, w.b_packed)
            if rows is None:
                y = y + delta.view_as(y)
            else:
                y = y.index_add(0, rows, delta.to(y.dtype))
        return y.view(shape)
