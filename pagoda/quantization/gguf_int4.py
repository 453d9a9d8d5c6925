"""GGUF Q4_0 / Q4_1 weights kept packed, multiplied with torch's int4 CPU kernel.

torch's ``_weight_int4pack_mm_for_cpu`` computes w = (q - 8) * scale + zero per group of 32
input weights. Both formats map onto it exactly: Q4_0 (w = d (q - 8)) with scale d, zero 0;
Q4_1 (w = d q + m) with scale d, zero m + 8 d.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import nn

from pagoda.layers.linear import LinearBase
from pagoda.layers.prepacked import linear, prepack_weight

GROUP = 32
PACKABLE = {GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1}


def unpack_q4(ggml_type: GGMLQuantizationType, data: np.ndarray, shape: tuple[int, int]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw Q4 blocks of a [rows, cols] matrix -> (q uint8 [rows, cols] in 0..15, scale and zero
    float32 [rows, cols / 32]) in the kernel's convention."""
    rows, cols = shape
    blocks = np.ascontiguousarray(data).reshape(rows * cols // GROUP, -1)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    if ggml_type == GGMLQuantizationType.Q4_0:
        qs, zero = blocks[:, 2:], np.zeros_like(d)
    elif ggml_type == GGMLQuantizationType.Q4_1:
        m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        qs, zero = blocks[:, 4:], m + 8 * d
    else:
        raise ValueError(f"{ggml_type.name} is not a 4-bit type the int4 kernel can take")
    # byte j holds weight j (low nibble) and weight j + 16 (high nibble) of its block
    q = np.empty((qs.shape[0], GROUP), dtype=np.uint8)
    np.bitwise_and(qs, 0x0F, out=q[:, : GROUP // 2])
    np.right_shift(qs, 4, out=q[:, GROUP // 2:])
    return (torch.from_numpy(q).view(rows, cols), torch.from_numpy(d).view(rows, -1),
            torch.from_numpy(zero).view(rows, -1))


class Int4Linear(nn.Module):
    """Replaces a (possibly fused, possibly TP-sharded) linear layer by its packed 4-bit form.

    Loading reuses the replaced layer's ``weight_loader`` on staging tensors (codes, scales,
    zeros), so fused shards and tensor-parallel slices land in the same rows as they would
    densely; ``finalize`` then packs them for the kernel.

    The int4 kernel wins while a step streams weights (few rows: decode of small batches) and
    loses once it is compute-bound: its cost grows linearly with the rows. Like llama.cpp, which
    dequantizes for batched matmuls, inputs of more than ``max_int4_rows`` rows (prefill, large
    decode batches) use the same weights dequantized once into the activation dtype.
    """

    max_int4_rows = 16

    def __init__(self, base: LinearBase, dtype: torch.dtype) -> None:
        super().__init__()
        if base.in_features % GROUP:
            raise ValueError(f"in_features {base.in_features} is not a multiple of {GROUP}")
        self.base_loader = base.weight_loader
        self.in_features, self.out_features = base.in_features, base.out_features
        self.tp = base.tp
        self.dtype = dtype
        self.bias = base.bias
        groups = base.in_features // GROUP
        # every row is written by the shards' loaders (checked in finalize)
        self._codes = torch.empty(base.out_features, base.in_features, dtype=torch.uint8)
        self._scale = torch.empty(base.out_features, groups)
        self._zero = torch.empty(base.out_features, groups)
        self._shards: set[object] = set()
        self._num_shards = 3 if hasattr(base, "num_kv_heads") else len(getattr(base, "output_sizes", [None]))
        self.register_buffer("packed", torch.empty(0, dtype=torch.uint8), persistent=False)
        self.register_buffer("scales_and_zeros", torch.empty(0, dtype=dtype), persistent=False)
        self.register_buffer("dense", torch.empty(0, dtype=dtype), persistent=False)
        self.dense_packed: torch.Tensor | None = None
        self.reduce = type(base).__name__ == "RowParallelLinear"

    def load_quantized(self, ggml_type: GGMLQuantizationType, data: np.ndarray, shape: tuple[int, int],
                       shard_id: object) -> None:
        codes, scale, zero = unpack_q4(ggml_type, data, shape)
        for staging, loaded in ((self._codes, codes), (self._scale, scale), (self._zero, zero)):
            # a Parameter sharing the staging tensor's storage: the layer's loader writes into it
            self.base_loader(nn.Parameter(staging, requires_grad=False), loaded, shard_id)
        self._shards.add(shard_id)

    def finalize(self) -> None:
        if len(self._shards) < self._num_shards:
            raise ValueError(f"packed linear got {len(self._shards)} of its {self._num_shards} parts from the checkpoint")
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self._codes.to(torch.int32), 1)
        # [groups, out, 2] as the kernel wants, in the activation dtype
        self.scales_and_zeros = torch.stack([self._scale.t(), self._zero.t()], dim=-1).contiguous().to(self.dtype)
        groups = self._scale.shape[1]
        codes = self._codes.view(self.out_features, groups, GROUP).float() - 8
        dense = codes * self._scale.unsqueeze(-1) + self._zero.unsqueeze(-1)
        self.dense = dense.view(self.out_features, self.in_features).to(self.dtype)
        self.dense_packed = prepack_weight(self.dense)
        if self.dense_packed is not None:
            self.dense = self.dense.new_empty(0)
        del self._codes, self._scale, self._zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features)
        if x.shape[0] > self.max_int4_rows:
            y = linear(x, self.dense, None, self.dense_packed)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, GROUP, self.scales_and_zeros)
        y = y.reshape(*shape[:-1], self.out_features)
        if self.reduce:
            y = self.tp.all_reduce(y)
        return y if self.bias is None else y + self.bias

