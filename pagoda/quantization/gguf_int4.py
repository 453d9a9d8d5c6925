"""GGUF Q4_0 / Q4_1 / Q4_K weights kept packed for CPU matmuls.

Each group of 32 input weights is w = q * scale + offset (q in 0..15): Q4_0 (w = d (q - 8)) has
scale d and offset -8 d, Q4_1 (w = d q + m) scale d and offset m, each Q4_K sub-block (w = d sc q -
dmin m, see ``gguf_kquant``) scale d sc and offset -dmin m, exact in float32. torch's
``_weight_int4pack_mm_for_cpu`` convention, w = (q - 8) * scale + zero, is what ``unpack_q4``
returns (zero = offset + 8 scale).

Two numerics, chosen at load (``ModelConfig.deterministic``):

- deterministic: Pagoda's fixed-order kernel (``torch.ops.pagoda.invariant_linear``) at every row
  count, the weights packed in tiles; a row's result never depends on the other rows of its step.
- default (bfloat16): a kernel per row by the row's role (``pagoda.layers.row_roles``): prompt rows
  through oneDNN's bfloat16 GEMM on a dequantized copy (the same bits at every row count, so a
  prompt's KV does not depend on chunking or prefix hits), generated rows through torch's int4
  kernel while a step has at most 16 of them (faster for decode) and oneDNN above. Both copies are
  held (about 4.5 bits + 16 bits per weight). ``weights_memory="packed"`` keeps only the packed tiles
  and runs every row through ``invariant_linear``, as deterministic does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import nn

from pagoda.kernels import cpu_kernels
from pagoda.layers import row_roles
from pagoda.layers.linear import LinearBase
from pagoda.layers.prepacked import linear, prepack_weight
from pagoda.quantization.kquant_blocks import unpack_kquant

GROUP = 32
# generated rows of a step up to which torch's int4 kernel beats oneDNN on a dequantized copy (measured)
MAX_INT4_ROWS = 16
PACKABLE = {GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1, GGMLQuantizationType.Q4_K}


def unpack_q4(ggml_type: GGMLQuantizationType, data: np.ndarray, shape: tuple[int, int]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw Q4 blocks of a [rows, cols] matrix -> (q uint8 [rows, cols] in 0..15, scale and zero
    float32 [rows, cols / 32]) in torch's int4 convention, w = (q - 8) * scale + zero."""
    q, scale, offset = unpack_q4_affine(ggml_type, data, shape)
    return q, scale, offset + 8 * scale


def unpack_q4_affine(ggml_type: GGMLQuantizationType, data: np.ndarray, shape: tuple[int, int]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw Q4 blocks of a [rows, cols] matrix -> (q uint8 [rows, cols] in 0..15, scale and offset
    float32 [rows, cols / 32]) with w = q * scale + offset."""
    if ggml_type == GGMLQuantizationType.Q4_K:  # 8 sub-blocks of 32 per super-block, each a Q4_1-style block
        return unpack_kquant(ggml_type, data, shape)
    rows, cols = shape
    blocks = np.ascontiguousarray(data).reshape(rows * cols // GROUP, -1)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    if ggml_type == GGMLQuantizationType.Q4_0:
        qs, offset = blocks[:, 2:], -8 * d
    elif ggml_type == GGMLQuantizationType.Q4_1:
        qs, offset = blocks[:, 4:], blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    else:
        raise ValueError(f"{ggml_type.name} is not a 4-bit type the int4 kernel can take")
    # byte j holds weight j (low nibble) and weight j + 16 (high nibble) of its block
    q = np.empty((qs.shape[0], GROUP), dtype=np.uint8)
    np.bitwise_and(qs, 0x0F, out=q[:, : GROUP // 2])
    np.right_shift(qs, 4, out=q[:, GROUP // 2:])
    return (torch.from_numpy(q).view(rows, cols), torch.from_numpy(d).view(rows, -1),
            torch.from_numpy(offset).view(rows, -1))


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """q uint8 [rows, cols] in 0..15 -> [rows, cols / 2] in GGUF's block order (byte j of a group
    of 32 holds weight j in its low nibble and weight j + 16 in its high one)."""
    groups = q.view(q.shape[0], -1, 2, GROUP // 2)
    return (groups[:, :, 0] | (groups[:, :, 1] << 4)).reshape(q.shape[0], -1).contiguous()


TILE = 16  # outputs per tile of the kernel's Q4 layout


def run_by_role(x: torch.Tensor, out_features: int, prompt: Callable[[torch.Tensor], torch.Tensor],
                generated: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """x [rows, in] -> [rows, out_features]: the step's prompt rows through ``prompt``, its generated rows
    through ``generated`` (``pagoda.layers.row_roles``; without roles every row is a prompt row)."""
    roles = row_roles.current()
    rows = x.shape[0]
    if roles is None or roles.num_rows != rows or roles.num_prompt == rows:
        return prompt(x)
    if roles.num_prompt == 0:
        return generated(x)
    prompt_rows, generated_rows = roles.split
    y = x.new_empty(rows, out_features)
    y.index_copy_(0, prompt_rows, prompt(x.index_select(0, prompt_rows)))
    y.index_copy_(0, generated_rows, generated(x.index_select(0, generated_rows)))
    return y


def dense_copy(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unpacked codes [N, K] with a scale and offset per sub-block [N, K / block] -> the weight in ``dtype``
    for the dense kernels: (weight, oneDNN-prepacked weight), the first emptied when the second exists."""
    n, k = codes.shape
    blocks = scale.shape[1]
    dense = codes.view(n, blocks, k // blocks).float() * scale.unsqueeze(-1) + offset.unsqueeze(-1)
    dense = dense.view(n, k).to(dtype)
    packed = prepack_weight(dense)
    return (dense.new_empty(0) if packed is not None else dense), packed


def tile_q4(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed codes [N, K / 2] and scale / offset [N, K / 32] -> the kernel's layout, tiles of 16
    outputs with each group's codes and parameters side by side: codes [ceil(N / 16), K / 32, 16,
    16], scale and offset [ceil(N / 16), K / 32, 16] (outputs past N padded with zeros)."""
    rows, groups = scale.shape
    pad = -rows % TILE

    def tiles(t: torch.Tensor, width: int) -> torch.Tensor:
        t = torch.cat([t, t.new_zeros(pad, t.shape[1])]) if pad else t
        return t.view(-1, TILE, groups, width).transpose(1, 2).contiguous()

    return tiles(codes, GROUP // 2), tiles(scale, 1).squeeze(-1), tiles(offset, 1).squeeze(-1)


class Int4Linear(nn.Module):
    """Replaces a (possibly fused, possibly TP-sharded) linear layer by its packed 4-bit form.

    Loading reuses the replaced layer's ``weight_loader`` on staging tensors (codes, scales,
    offsets), so fused shards and tensor-parallel slices land in the same rows as they would
    densely; ``finalize`` then packs them for the kernel.

    Deterministic: the packed weights stream at memory speed for a few rows (decode of small
    batches) and are dequantized a block of outputs at a time into a small buffer for many rows
    (prefill, large batches); both give the same bits for a row. Where the C++ kernels are
    unavailable, a dequantized copy goes through oneDNN's bfloat16 GEMM (measured batch-invariant
    on this CPU) or, in float32, ``F.linear`` (not batch-invariant).
    """

    lora: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # adds LoRA deltas (pagoda.lora)

    def __init__(self, base: LinearBase, dtype: torch.dtype, deterministic: bool = True,
                 packed_only: bool = False) -> None:
        super().__init__()
        self.deterministic = deterministic
        self.packed_only = packed_only  # weights_memory="packed": no dequantized copy, one kernel for every row
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
        self._offset = torch.empty(base.out_features, groups)
        self._shards: set[object] = set()
        self._num_shards = 3 if hasattr(base, "num_kv_heads") else len(getattr(base, "output_sizes", [None]))
        self.register_buffer("codes", torch.empty(0, dtype=torch.uint8), persistent=False)
        self.register_buffer("scale", torch.empty(0), persistent=False)
        self.register_buffer("offset", torch.empty(0), persistent=False)
        self.register_buffer("int4pack", torch.empty(0, dtype=torch.uint8), persistent=False)
        self.register_buffer("scales_and_zeros", torch.empty(0, dtype=dtype), persistent=False)
        self.register_buffer("dense", torch.empty(0, dtype=dtype), persistent=False)
        self.dense_packed: torch.Tensor | None = None
        self.reduce = type(base).__name__ == "RowParallelLinear"

    def load_quantized(self, ggml_type: GGMLQuantizationType, data: np.ndarray, shape: tuple[int, int],
                       shard_id: object) -> None:
        codes, scale, offset = unpack_q4_affine(ggml_type, data, shape)
        for staging, loaded in ((self._codes, codes), (self._scale, scale), (self._offset, offset)):
            # a Parameter sharing the staging tensor's storage: the layer's loader writes into it
            self.base_loader(nn.Parameter(staging, requires_grad=False), loaded, shard_id)
        self._shards.add(shard_id)

    def finalize(self) -> None:
        if len(self._shards) < self._num_shards:
            raise ValueError(f"packed linear got {len(self._shards)} of its {self._num_shards} parts from the checkpoint")
        by_role = (not self.deterministic and not self.packed_only and self.dtype == torch.bfloat16
                   and torch.backends.mkldnn.is_available()
                   and self.out_features % 16 == 0)  # torch's int4 packing takes whole tiles of 16 outputs
        if cpu_kernels.invariant_linear_available() and not by_role:
            self.codes, self.scale, self.offset = tile_q4(pack_nibbles(self._codes), self._scale, self._offset)
        elif self.packed_only:
            raise ValueError("weights_memory='packed' needs Pagoda's CPU kernel invariant_linear (AVX-512 BF16), "
                             "which this machine or build lacks: use weights_memory='auto'")
        else:
            if by_role:
                self.int4pack = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self._codes.to(torch.int32), 1)
                zero = self._offset + 8 * self._scale
                # [groups, out, 2] as the kernel wants, in the activation dtype
                self.scales_and_zeros = torch.stack([self._scale.t(), zero.t()], dim=-1).contiguous().to(self.dtype)
            self.dense, self.dense_packed = dense_copy(self._codes, self._scale, self._offset, self.dtype)
        del self._codes, self._scale, self._offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features)
        if self.codes.numel():
            y = torch.ops.pagoda.invariant_linear(x.contiguous(), self.codes, self.scale, self.offset,
                                                  self.out_features, x.dtype)
        elif self.int4pack.numel():
            y = self._by_role(x)
        else:
            y = linear(x, self.dense, None, self.dense_packed)
        if self.lora is not None:  # LoRA deltas (pagoda.lora), before the all-reduce
            y = self.lora(x, y)
        y = y.reshape(*shape[:-1], self.out_features)
        if self.reduce:
            y = self.tp.all_reduce(y)
        return y if self.bias is None else y + self.bias

    def _by_role(self, x: torch.Tensor) -> torch.Tensor:
        return run_by_role(x, self.out_features, self._dense, self._generated)

    def _generated(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > MAX_INT4_ROWS:
            return self._dense(x)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.int4pack, GROUP, self.scales_and_zeros)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.dense, None, self.dense_packed)
