"""Linear layers that know how to shard themselves for tensor parallelism.

Every parameter carries a ``weight_loader(param, loaded_weight, shard_id=None)`` that copies
this rank's slice of a full checkpoint tensor; ``shard_id`` names a part of a fused weight
("q"/"k"/"v" of QKV, 0/1 of gate_up). The collective, when there is one, is in ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pagoda.layers.prepacked import linear, prepack_weight
from pagoda.parallel import SINGLE, TensorParallel

WeightLoader = Callable[[nn.Parameter, torch.Tensor, object], None]


def set_weight_loader(param: nn.Parameter, loader: WeightLoader) -> None:
    """Attaches the loader that the model's ``load_weights`` calls for ``param`` (as vLLM does):
    it knows the shard maths, the parameter only holds the result."""
    param.__dict__["weight_loader"] = loader  # a plain attribute; Parameter declares none


class LinearBase(nn.Module):
    """y = x W^T (+ b) with W of shape [out_per_rank, in_per_rank]."""

    packed: torch.Tensor | None = None
    lora: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # adds LoRA deltas (pagoda.lora)

    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        set_weight_loader(self.weight, self.weight_loader)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            set_weight_loader(self.bias, self.weight_loader)
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        param.data.copy_(loaded)

    def prepack(self) -> None:
        """After loading: bf16 CPU weights move into oneDNN's layout (the plain copy is dropped)."""
        self.packed = prepack_weight(self.weight)
        if self.packed is not None:
            self.weight.data = self.weight.data.new_empty(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight, self.bias, self.packed)
        return y if self.lora is None else self.lora(x, y)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; each rank returns its slice (no collective)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, tp: TensorParallel = SINGLE):
        super().__init__(in_features, tp.shard(out_features, "output features"), bias, tp)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        n = param.shape[0]
        param.data.copy_(loaded.narrow(0, self.tp.rank * n, n))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs fused in one matrix (gate and up projections)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False,
                 tp: TensorParallel = SINGLE) -> None:
        self.output_sizes = output_sizes
        super().__init__(in_features, sum(output_sizes), bias, tp)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        assert isinstance(shard_id, int)
        size = self.output_sizes[shard_id] // self.tp.size
        offset = sum(self.output_sizes[:shard_id]) // self.tp.size
        param.data.narrow(0, offset, size).copy_(loaded.narrow(0, self.tp.rank * size, size))


class QKVParallelLinear(ColumnParallelLinear):
    """Q, K and V projections fused; heads split across ranks, KV heads replicated when TP exceeds them."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False,
                 tp: TensorParallel = SINGLE) -> None:
        self.head_dim = head_dim
        self.num_heads = tp.shard(num_heads, "attention heads")
        if num_kv_heads >= tp.size:
            self.num_kv_heads = tp.shard(num_kv_heads, "key/value heads")
            self.kv_replicas = 1
        else:
            if tp.size % num_kv_heads:
                raise ValueError(f"tensor-parallel size {tp.size} is not a multiple of {num_kv_heads} KV heads")
            self.num_kv_heads = 1
            self.kv_replicas = tp.size // num_kv_heads
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp.size
        super().__init__(hidden_size, out, bias, tp)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        if shard_id == "q":
            offset, size, rank = 0, q_size, self.tp.rank
        elif shard_id == "k":
            offset, size, rank = q_size, kv_size, self.tp.rank // self.kv_replicas
        elif shard_id == "v":
            offset, size, rank = q_size + kv_size, kv_size, self.tp.rank // self.kv_replicas
        else:
            raise ValueError(f"unknown QKV shard {shard_id!r}")
        param.data.narrow(0, offset, size).copy_(loaded.narrow(0, rank * size, size))


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial products are summed with an all-reduce."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, tp: TensorParallel = SINGLE):
        super().__init__(tp.shard(in_features, "input features"), out_features, bias, tp)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: object = None) -> None:
        if param.dim() == 1:  # bias: added once, after the reduction
            param.data.copy_(loaded)
            return
        n = param.shape[1]
        param.data.copy_(loaded.narrow(1, self.tp.rank * n, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight, None, self.packed)
        if self.lora is not None:  # a partial delta on this rank's inputs, summed with the product
            y = self.lora(x, y)
        y = self.tp.all_reduce(y)
        return y if self.bias is None else y + self.bias
