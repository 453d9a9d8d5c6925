"""GGUF K-quants (Q4_K, Q5_K, Q6_K) read as sub-blocks of ``w = code * scale + offset``, and the int8 VNNI layer
that multiplies Q5_K / Q6_K (and any mix of GGUF block types in one fused layer) with the codes kept as stored.

A K-quant super-block holds 256 weights (layouts as gguf-py's ``gguf.quants`` dequantizes them):

- Q4_K (144 bytes): float16 d, dmin; 12 bytes of 6-bit sub-scales sc and mins m (8 of each); 128 bytes of
  nibbles. Sub-block j (32 weights) is w = (d sc_j) q - (dmin m_j), q in 0..15: exactly a Q4_1-style block, so
  Q4_K joins Q4_0 / Q4_1 on the packed 4-bit path (``gguf_int4``).
- Q5_K (176 bytes): as Q4_K plus 32 bytes holding each weight's fifth bit, q in 0..31.
- Q6_K (210 bytes): 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 sub-scales, float16 d. Sub-block
  j (16 weights) is w = (d sc_j) (q - 32), q in 0..63.

d sc (11 + 8 significant bits), dmin m and 32 d sc are exact in float32: Q4_K / Q5_K's ``code * scale + offset``
in float32 is bit for bit gguf-py's float32 dequantization, and Q6_K's ``(code - 32) * scale`` is.

``KQuantLinear`` keeps unsigned 8-bit codes (one byte a weight, unpacked at load) with a float32 scale and offset
per sub-block, and multiplies on ``torch.ops.pagoda.kquant_linear`` (in the default bfloat16 mode beside a
dequantized copy for prompts and large steps, see the class): activations quantized to int8 per sub-block,
exact int32 sums per sub-block (code dot products and the activation codes' sum, for the offset), sub-blocks
added in float in k order. Held: 1 + 8 / 32 = 1.25 B/weight with sub-blocks of 32, 1.5 B/weight with 16 (any
Q6_K part), against 2 for a bfloat16 copy. Batch invariant by construction, like ``int8_block_linear``.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import nn

from pagoda.layers.linear import LinearBase
from pagoda.layers.prepacked import linear
from pagoda.quantization.gguf_int4 import MAX_INT4_ROWS, dense_copy, run_by_role, unpack_q4_affine
from pagoda.quantization.gguf_q8 import quantize_blocks, unpack_q8_0
from pagoda.quantization.kquant_blocks import sub_block, unpack_kquant

Q = GGMLQuantizationType
VECTOR = 16  # outputs per VNNI vector
# block types whose every sub-block is code * scale + offset with codes in 0..255 (a fused layer may mix them)
KQUANT_TYPES = {Q.Q4_0, Q.Q4_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K}


def unpack_blocks(ggml_type: GGMLQuantizationType, data: np.ndarray, shape: tuple[int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Any of ``KQUANT_TYPES`` -> (codes uint8 in 0..255 [rows, cols], scale and offset float32 per sub-block);
    Q8_0's signed codes shift by 128 (offset -128 d), Q4_0's offset is -8 d."""
    if ggml_type in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        return unpack_kquant(ggml_type, data, shape)
    if ggml_type == Q.Q8_0:
        codes, scale = unpack_q8_0(data, shape)
        return (codes.to(torch.int16) + 128).to(torch.uint8), scale, -128 * scale
    if ggml_type in (Q.Q4_0, Q.Q4_1):
        return unpack_q4_affine(ggml_type, data, shape)
    raise ValueError(f"{ggml_type.name} cannot be kept packed on the K-quant path; supported: "
                     f"{sorted(t.name for t in KQUANT_TYPES)}")


def pack_for_kernel(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """codes uint8 [N, K], scale / offset float32 [N, K / B] -> the kernel's packed codes [N16 / 16, K / 4, 16, 4]
    and scale / offset [N16 / 16, K / B, 16], N padded to N16 with zero rows."""
    n, k = codes.shape
    nb = scale.shape[1]
    pad = -n % VECTOR
    if pad:
        codes = torch.cat([codes, codes.new_zeros(pad, k)])
        scale, offset = (torch.cat([t, t.new_zeros(pad, nb)]) for t in (scale, offset))
    vecs = codes.shape[0] // VECTOR
    packed = codes.view(vecs, VECTOR, k // 4, 4).permute(0, 2, 1, 3).contiguous()
    scale_v, offset_v = (t.float().reshape(vecs, VECTOR, nb).permute(0, 2, 1).contiguous() for t in (scale, offset))
    return packed, scale_v, offset_v


def reference_kquant_linear(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor
                            ) -> torch.Tensor:
    """float64 [M, N]: the kernel's sum with the activations quantized as it does them, in exact arithmetic."""
    block = codes.shape[1] // scale.shape[1]
    xq, xs = quantize_blocks(x, block)
    nb = scale.shape[1]
    xb = xq.view(x.shape[0], nb, block).double()
    dots = torch.einsum("mbk,nbk->mnb", xb, codes.view(-1, nb, block).double())
    sums = xb.sum(-1)  # [M, nb]
    per_block = dots * scale.double()[None] + sums[:, None, :] * offset.double()[None]
    return (per_block * xs.double()[:, None, :]).sum(-1)


class KQuantLinear(nn.Module):
    """Replaces a (possibly fused, possibly TP-sharded) linear layer whose checkpoint parts are GGUF block types
    of ``KQUANT_TYPES`` (any mix): sub-blocks of 16 weights if any part is Q6_K, else 32.

    Loading reuses the replaced layer's ``weight_loader`` on staging tensors (codes, scales, offsets), so fused
    shards and tensor-parallel slices land in the rows they would densely; ``finalize`` packs them.

    Under the default numerics in bfloat16 (not ``deterministic``, not ``packed_only``) the layer also keeps a
    dequantized bfloat16 copy and picks the kernel per row by its role, as ``Int4Linear`` does: prompt rows and
    steps of more than 16 generated rows through oneDNN on the copy (faster there: 1.2-1.3x at 64 rows,
    measured), up to 16 generated rows through ``kquant_linear`` (1.4x faster than the copy at one row).
    Otherwise every row goes through ``kquant_linear`` and nothing but the codes is held.
    """

    def __init__(self, base: LinearBase, block: int, dtype: torch.dtype = torch.float32,
                 deterministic: bool = True, packed_only: bool = False) -> None:
        super().__init__()
        self.by_role = (not deterministic and not packed_only and dtype == torch.bfloat16
                        and torch.backends.mkldnn.is_available())
        self.dtype = dtype
        if base.in_features % 32:
            raise ValueError(f"in_features {base.in_features} is not a multiple of 32")
        self.block = block
        self.base_loader = base.weight_loader
        self.in_features, self.out_features = base.in_features, base.out_features
        self.tp = base.tp
        self.bias = base.bias
        self.reduce = type(base).__name__ == "RowParallelLinear"
        self._codes = torch.empty(base.out_features, base.in_features, dtype=torch.uint8)
        self._scale = torch.empty(base.out_features, base.in_features // block)
        self._offset = torch.empty(base.out_features, base.in_features // block)
        self._shards: set[object] = set()
        self._num_shards = 3 if hasattr(base, "num_kv_heads") else len(getattr(base, "output_sizes", [None]))
        self.register_buffer("codes", torch.empty(0, dtype=torch.uint8), persistent=False)
        self.register_buffer("scale", torch.empty(0), persistent=False)
        self.register_buffer("offset", torch.empty(0), persistent=False)
        self.register_buffer("dense", torch.empty(0, dtype=dtype), persistent=False)
        self.dense_packed: torch.Tensor | None = None

    def load_quantized(self, ggml_type: GGMLQuantizationType, data: np.ndarray, shape: tuple[int, int],
                       shard_id: object) -> None:
        if sub_block(ggml_type) < self.block:
            raise ValueError(f"{ggml_type.name} has sub-blocks of {sub_block(ggml_type)}, this layer {self.block}")
        codes, scale, offset = unpack_blocks(ggml_type, data, shape)
        repeat = sub_block(ggml_type) // self.block  # a sub-block of 32 as two of 16 beside Q6_K parts
        if repeat != 1:
            scale, offset = scale.repeat_interleave(repeat, 1), offset.repeat_interleave(repeat, 1)
        for staging, loaded in ((self._codes, codes), (self._scale, scale), (self._offset, offset)):
            self.base_loader(nn.Parameter(staging, requires_grad=False), loaded, shard_id)
        self._shards.add(shard_id)

    def finalize(self) -> None:
        if len(self._shards) < self._num_shards:
            raise ValueError(f"packed linear got {len(self._shards)} of its {self._num_shards} parts from the checkpoint")
        self.codes, self.scale, self.offset = pack_for_kernel(self._codes, self._scale, self._offset)
        if self.by_role:
            self.dense, self.dense_packed = dense_copy(self._codes, self._scale, self._offset, self.dtype)
        del self._codes, self._scale, self._offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features)
        y = run_by_role(x, self.out_features, self._dense, self._generated) if self.by_role else self._packed(x)
        y = y.reshape(*shape[:-1], self.out_features)
        if self.reduce:
            y = self.tp.all_reduce(y)
        return y if self.bias is None else y + self.bias

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.pagoda.kquant_linear(x.contiguous(), self.codes, self.scale, self.offset, self.block,
                                              self.out_features, x.dtype)

    def _generated(self, x: torch.Tensor) -> torch.Tensor:
        return self._dense(x) if x.shape[0] > MAX_INT4_ROWS else self._packed(x)

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.dense, None, self.dense_packed)

    def unpacked(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes uint8 [N, K], scale and offset float32 [N, K / block]) as loaded (for tests)."""
        k, nb = self.in_features, self.in_features // self.block
        codes = self.codes.permute(0, 2, 1, 3).reshape(-1, k)[: self.out_features]
        scale, offset = (t.permute(0, 2, 1).reshape(-1, nb)[: self.out_features] for t in (self.scale, self.offset))
        return codes, scale, offset
