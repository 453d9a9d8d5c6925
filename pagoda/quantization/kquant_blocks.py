"""GGUF K-quant super-blocks (Q4_K, Q5_K, Q6_K) read as sub-blocks of ``w = code * scale + offset`` (layouts as
gguf-py's ``gguf.quants`` dequantizes them; see ``gguf_kquant`` for what each block holds)."""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

Q = GGMLQuantizationType
SUPER = 256  # weights per K-quant super-block


def sub_block(ggml_type: GGMLQuantizationType) -> int:
    """Weights per scale of a block type (16 for Q6_K, 32 for the others)."""
    return 16 if ggml_type == Q.Q6_K else 32


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    return blocks[:, start:start + 2].copy().view(np.float16).astype(np.float32)  # [n, 1]


def _scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K's 12 bytes -> 8 six-bit sub-scales and 8 six-bit mins per super-block (uint8 [n, 8] each):
    bytes 0-3 hold sc 0-3 (and the top bits of sc 4-7), 4-7 m 0-3 (top bits of m 4-7), 8-11 the low nibbles of
    sc 4-7 (low) and m 4-7 (high)."""
    d, m, low = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([d & 0x3F, (low & 0x0F) | ((d >> 2) & 0x30)], axis=1)
    mn = np.concatenate([m & 0x3F, (low >> 4) | ((m >> 2) & 0x30)], axis=1)
    return sc, mn


def unpack_kquant(ggml_type: GGMLQuantizationType, data: np.ndarray, shape: tuple[int, int]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw Q4_K / Q5_K / Q6_K blocks of a [rows, cols] matrix -> (codes uint8 [rows, cols], scale and offset
    float32 [rows, cols / sub_block(type)]) with w = codes * scale + offset."""
    rows, cols = shape
    if cols % SUPER:
        raise ValueError(f"{ggml_type.name} matrix with {cols} columns: not a multiple of {SUPER}")
    blocks = np.ascontiguousarray(data).reshape(rows * cols // SUPER, GGML_QUANT_SIZES[ggml_type][1])
    n = blocks.shape[0]
    if ggml_type in (Q.Q4_K, Q.Q5_K):
        d, dmin = _f16(blocks, 0), _f16(blocks, 2)
        sc, mn = _scale_min_k4(blocks[:, 4:16])
        scale, offset = d * sc.astype(np.float32), -(dmin * mn.astype(np.float32))
        qs = blocks[:, -128:].reshape(n, 4, 1, 32)  # 32 bytes per pair of sub-blocks: low nibbles, then high
        codes = ((qs >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F).reshape(n, 8, 32)
        if ggml_type == Q.Q5_K:  # bit j of byte i: the fifth bit of weight i of sub-block j
            qh = blocks[:, 16:48].reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
            codes = codes | ((qh & 1) << 4)
    elif ggml_type == Q.Q6_K:
        ql, qh = blocks[:, :128], blocks[:, 128:192]
        sc = blocks[:, 192:208].view(np.int8).astype(np.float32)
        scale = _f16(blocks, 208) * sc
        offset = -32 * scale
        low = (ql.reshape(n, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F
        high = (qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 0x03
        # per half of 128 weights: low nibbles of 64 bytes then their high nibbles; 2-bit fields of 32 bytes
        codes = low.reshape(n, 2, 4, 32) | (high << 4)
    else:
        raise ValueError(f"{ggml_type.name} is not a K-quant Pagoda keeps packed (Q4_K, Q5_K, Q6_K)")
    return (torch.from_numpy(np.ascontiguousarray(codes, dtype=np.uint8)).view(rows, cols),
            torch.from_numpy(np.ascontiguousarray(scale, dtype=np.float32)).view(rows, -1),
            torch.from_numpy(np.ascontiguousarray(offset, dtype=np.float32)).view(rows, -1))
