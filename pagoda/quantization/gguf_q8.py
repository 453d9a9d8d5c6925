"""GGUF Q8_0 weights kept as stored (int8 codes with one float scale per 32 inputs), multiplied as llama.cpp
does: the activations are quantized per block of 32 too, each block's dot product is an exact int32 sum
(AVX-512 VNNI) and the blocks add up in float in k order (``torch.ops.pagoda.int8_block_linear``).

A Q8_0 block is 34 bytes: a float16 scale d and 32 int8 codes q, w = d * q. The kernel's layout holds the
codes (1 byte a weight), a float32 scale and an int32 correction per block: 1.25 bytes a weight against 2
for a bfloat16 copy. Batch invariant: every (row, output) takes the same integer sums and the same float
operations in the same order at every row count.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import nn

from pagoda.layers.linear import LinearBase

BLOCK = 32
VECTOR = 16  # outputs per VNNI vector
Q8_TYPES = {GGMLQuantizationType.Q8_0}


def unpack_q8_0(data: np.ndarray, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw Q8_0 blocks of a [rows, cols] matrix -> (codes int8 [rows, cols], scales float32 [rows, cols / 32])."""
    rows, cols = shape
    blocks = np.ascontiguousarray(data).reshape(rows * cols // BLOCK, 2 + BLOCK)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:].copy().view(np.int8)
    return torch.from_numpy(q).view(rows, cols), torch.from_numpy(d).view(rows, cols // BLOCK)


def pack_for_kernel(codes: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """codes int8 [N, K], scales float32 [N, K / 32] -> the kernel's (packed codes [N16 / 16, K / 4, 16, 4],
    scales [N16 / 16, K / 32, 16], corrections 128 * block sums int32, same shape), N padded to N16 with zero
    rows."""
    n, k = codes.shape
    pad = -n % VECTOR
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad, k)])
        scales = torch.cat([scales, scales.new_zeros(pad, k // BLOCK)])
    vecs = codes.shape[0] // VECTOR
    packed = codes.view(vecs, VECTOR, k // 4, 4).permute(0, 2, 1, 3).contiguous()
    sums = codes.view(-1, k // BLOCK, BLOCK).sum(-1, dtype=torch.int32) * 128
    per_block = (scales.float(), sums)
    scale_v, corr_v = (t.reshape(vecs, VECTOR, k // BLOCK).permute(0, 2, 1).contiguous() for t in per_block)
    return packed, scale_v, corr_v


def quantize_blocks(x: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block of ``block`` along the last dim (portable PyTorch, the kernels' arithmetic): (codes int8
    [M, K], scales float32 [M, K / block])."""
    xf = x.float().reshape(x.shape[0], -1, block)
    amax = xf.abs().amax(-1, keepdim=True)
    nonzero = amax > 0
    scale = torch.where(nonzero, amax / 127, torch.ones_like(amax))
    inv = torch.where(nonzero, torch.full_like(amax, 127).div(amax), torch.zeros_like(amax))
    codes = torch.round(xf * inv).clamp_(-127, 127).to(torch.int8)
    return codes.reshape(x.shape), scale.reshape(x.shape[0], -1)


def reference_q8_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 [M, N]: what the kernel computes, in PyTorch (float32 block sums in k order; for tests)."""
    xq, xs = quantize_blocks(x)
    nb = codes.shape[1] // BLOCK
    dots = torch.einsum("mbk,nbk->mnb", xq.view(-1, nb, BLOCK).long(), codes.view(-1, nb, BLOCK).long())
    y = torch.zeros(x.shape[0], codes.shape[0])
    for b in range(nb):
        y = torch.addcmul(y, dots[:, :, b].float(), scales[:, b][None, :] * xs[:, b][:, None])
    return y


class Q8Linear(nn.Module):
    """Replaces a (possibly fused, possibly TP-sharded) linear layer whose checkpoint parts are all Q8_0.

    Loading reuses the replaced layer's ``weight_loader`` on staging tensors (codes, scales), so fused shards
    and tensor-parallel slices land in the rows they would densely; ``finalize`` packs them for the kernel.
    """

    def __init__(self, base: LinearBase) -> None:
        super().__init__()
        if base.in_features % BLOCK:
            raise ValueError(f"in_features {base.in_features} is not a multiple of {BLOCK}")
        self.base_loader = base.weight_loader
        self.in_features, self.out_features = base.in_features, base.out_features
        self.tp = base.tp
        self.bias = base.bias
        self.reduce = type(base).__name__ == "RowParallelLinear"
        self._codes = torch.empty(base.out_features, base.in_features, dtype=torch.int8)
        self._scale = torch.empty(base.out_features, base.in_features // BLOCK)
        self._shards: set[object] = set()
        self._num_shards = 3 if hasattr(base, "num_kv_heads") else len(getattr(base, "output_sizes", [None]))
        self.register_buffer("codes", torch.empty(0, dtype=torch.int8), persistent=False)
        self.register_buffer("scale", torch.empty(0), persistent=False)
        self.register_buffer("correction", torch.empty(0, dtype=torch.int32), persistent=False)

    def load_quantized(self, ggml_type: GGMLQuantizationType, data: np.ndarray, shape: tuple[int, int],
                       shard_id: object) -> None:
        if ggml_type not in Q8_TYPES:
            raise ValueError(f"{ggml_type.name} is not Q8_0")
        codes, scale = unpack_q8_0(data, shape)
        for staging, loaded in ((self._codes, codes), (self._scale, scale)):
            self.base_loader(nn.Parameter(staging, requires_grad=False), loaded, shard_id)
        self._shards.add(shard_id)

    def finalize(self) -> None:
        if len(self._shards) < self._num_shards:
            raise ValueError(f"packed linear got {len(self._shards)} of its {self._num_shards} parts from the checkpoint")
        self.codes, self.scale, self.correction = pack_for_kernel(self._codes, self._scale)
        del self._codes, self._scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.pagoda.int8_block_linear(x.reshape(-1, self.in_features).contiguous(), self.codes, self.scale,
                                               self.correction, self.out_features, x.dtype)
        y = y.reshape(*shape[:-1], self.out_features)
        if self.reduce:
            y = self.tp.all_reduce(y)
        return y if self.bias is None else y + self.bias

    def unpacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes int8 [N, K], scales float32 [N, K / 32]) as loaded (for tests)."""
        k = self.in_features
        codes = self.codes.permute(0, 2, 1, 3).reshape(-1, k)[: self.out_features]
        scales = self.scale.permute(0, 2, 1).reshape(-1, k // BLOCK)[: self.out_features]
        return codes, scales
