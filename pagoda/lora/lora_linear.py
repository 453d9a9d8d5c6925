"""The low-rank delta of one linear layer, for the adapters in the engine's slots.

An adapter's A and B land in this rank's layout through the base layer's own ``weight_loader``
(the shard maths of fused QKV / gate-up and of tensor parallelism live there): for a
column-parallel layer A is whole and B is split like the weight's rows; for a row-parallel one A
is split like the weight's columns and B is whole (its partial delta is summed by the layer's
all-reduce with the base product). The sub-modules of a fused layer (q, k, v) stack along the
rank: A is [parts * r_pad, in] and B [out, parts * r_pad] is zero outside each part's block, so
one shrink and one expand cover the fused output. r_pad rounds the rank up to 32, the fixed-order
kernel's block.

Mixed batches: the step's rows are gathered once, grouped by slot; each adapter's rows take one
shrink (x A^T) and one expand (. B^T) matmul, the deltas go back to row order with one gather and
are added to the base output (Punica's grouped shrink/expand, as plain matmuls per adapter).

Batch invariance: a row's delta is x_row A^T B^T through the fixed-order kernel
(``pagoda::invariant_linear``; elsewhere ``pagoda.layers.prepacked.linear``), which gives a row the
same bits at every row count, added once to the row's base output: it depends on the row and its
adapter only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
from pagoda.layers.prepacked import linear
from pagoda.lora.peft_adapter import LoRALoadError

RANK_BLOCK = 32


@dataclass
class LoRAWeights:
    """One adapter's A [width, in] and B [out, width] for one layer on this rank, in the model dtype."""

    a: torch.Tensor
    b: torch.Tensor


@dataclass
class LoRABatch:
    """The step's rows by slot, shared by every LoRA layer of the model (set by ``LoRAManager``).

    ``order`` lists the rows that use an adapter, grouped by slot (None: every row of the step, in
    order); ``segments`` are (slot, start, end) ranges of ``order``; ``scatter`` maps each row of
    the step to its delta's position in the grouped order, rows without an adapter to one past the
    end (a zero row) (None: the identity)."""

    order: torch.Tensor | None = None
    segments: list[tuple[int, int, int]] = field(default_factory=list)
    scatter: torch.Tensor | None = None

    def set_rows(self, row_slots: list[int], device: torch.device | None = None) -> None:
        """The step's slot of each row (negative: no adapter)."""
        rows: dict[int, list[int]] = {}
        for r, slot in enumerate(row_slots):
            if slot >= 0:
                rows.setdefault(slot, []).append(r)
        order = [r for slot_rows in rows.values() for r in slot_rows]
        self.segments, at = [], 0
        for slot, slot_rows in rows.items():
            self.segments.append((slot, at, at + len(slot_rows)))
            at += len(slot_rows)
        if order == list(range(len(row_slots))):  # every row has an adapter, already grouped
            self.order = self.scatter = None
            return
        position = [len(order)] * len(row_slots)  # no adapter: the zero row after the deltas
        for i, r in enumerate(order):
            position[r] = i
        self.order = torch.tensor(order, dtype=torch.int64, device=device)
        self.scatter = torch.tensor(position, dtype=torch.int64, device=device)


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
            weights = LoRAWeights(weights.a.to(device), weights.b.to(device))
        self.slots[slot] = weights

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = self.batch
        if not batch.segments:
            return y
        x, shape = x.reshape(-1, x.shape[-1]), y.shape
        xs = x if batch.order is None else x.index_select(0, batch.order)  # rows grouped by slot
        deltas = []
        for slot, start, end in batch.segments:  # shrink then expand, one pair of matmuls per adapter
            w = self.slots[slot]
            if w is None:
                deltas.append(xs.new_zeros(end - start, shape[-1]))
            else:
                deltas.append(_matmul(_matmul(xs[start:end], w.a), w.b))
        if batch.scatter is None:
            delta = deltas[0] if len(deltas) == 1 else torch.cat(deltas)
        else:  # back to the step's row order; rows without an adapter get the zero row
            delta = torch.cat([*deltas, xs.new_zeros(1, shape[-1])]).index_select(0, batch.scatter)
        return (y.reshape(-1, shape[-1]) + delta).view(shape)


_NONE = torch.empty(0)


def _matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x w^T through the fixed-order kernel where it runs (every width here is a multiple of 32):
    a row's result is the same at every row count, and small matrices pay no per-shape set-up."""
    if x.is_cpu and w.dtype == x.dtype and cpu_kernels.invariant_linear_available():
        return torch.ops.pagoda.invariant_linear(x.contiguous(), w, _NONE, _NONE, w.shape[0], x.dtype)
    return linear(x, w, None, None)
