"""GGUF tensor data as llama.cpp stores it: packed quantized blocks and their dequantization.

``QuantizedTensor`` keeps a matrix packed (the int4 kernels read it as is); ``dequantize_blocks``
turns dense or block-quantized data into float32 (torch for Q8_0 / Q4_0 / Q4_1, gguf's numpy
code for the rest).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import gguf
import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """A GGUF matrix kept in its packed llama.cpp blocks.

    `shape` is the Hugging Face (rows, cols) = (out_features, in_features); each row of `data`
    (uint8, shape (rows, cols // block_size * type_size)) holds the blocks of one output row, in
    file order along the row. Q/K rows are already un-permuted, so row i is HF's row i.
    """

    ggml_type: GGMLQuantizationType
    shape: tuple[int, int]
    data: np.ndarray

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.ggml_type][0]

    @property
    def type_size(self) -> int:
        return GGML_QUANT_SIZES[self.ggml_type][1]

    def dequantize(self) -> torch.Tensor:
        """The float32 weights, shape `self.shape`."""
        return dequantize_blocks(self.data, self.ggml_type, self.shape)


def dequantize_blocks(data: np.ndarray, ggml_type: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    """Float32 torch tensor of `shape` from GGUF tensor data (dense values or packed blocks)."""
    with _single_threaded():
        return _dequantize(data, ggml_type, shape)


@contextmanager
def _single_threaded() -> Iterator[None]:
    # These elementwise ops are memory-bound, and torch's OpenMP workers spin: on a busy 2-core machine
    # the default model took 4-9 s with 2 threads against 0.4 s with one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _dequantize(data: np.ndarray, ggml_type: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    if ggml_type == GGMLQuantizationType.F32:
        return torch.from_numpy(np.array(data, dtype=np.float32)).reshape(shape)
    if ggml_type == GGMLQuantizationType.F16:
        return torch.from_numpy(np.array(data, dtype=np.float16)).reshape(shape).float()
    raw = torch.from_numpy(np.array(data, dtype=np.uint8).reshape(-1))
    if ggml_type == GGMLQuantizationType.BF16:
        return raw.view(torch.bfloat16).reshape(shape).float()
    fast = _TORCH_DEQUANTIZERS.get(ggml_type)
    if fast is not None:
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        return fast(raw.reshape(-1, type_size)).reshape(shape)
    values = gguf.quants.dequantize(np.asarray(data), ggml_type)  # K-quants and the rest: numpy
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)


# Torch versions of the three common block formats, ~2x faster than gguf's numpy ones. They write
# into one float32 output in place: fresh memory costs page faults, so few temporaries.
def _scale(blocks: torch.Tensor, start: int) -> torch.Tensor:
    return blocks[:, start:start + 2].contiguous().view(torch.float16)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    # Byte j holds weight j in its low nibble and weight j + 16 in its high nibble.
    out = torch.empty(qs.shape[0], 2 * qs.shape[1])
    out[:, :qs.shape[1]] = qs & 0x0F
    out[:, qs.shape[1]:] = qs >> 4
    return out


def _dequantize_q8_0(blocks: torch.Tensor) -> torch.Tensor:  # w = d * q, q int8
    return blocks[:, 2:].view(torch.int8).float().mul_(_scale(blocks, 0))


def _dequantize_q4_0(blocks: torch.Tensor) -> torch.Tensor:  # w = d * (q - 8)
    return _nibbles(blocks[:, 2:]).sub_(8.0).mul_(_scale(blocks, 0))


def _dequantize_q4_1(blocks: torch.Tensor) -> torch.Tensor:  # w = d * q + m
    return _nibbles(blocks[:, 4:]).mul_(_scale(blocks, 0)).add_(_scale(blocks, 2))


_TORCH_DEQUANTIZERS = {
    GGMLQuantizationType.Q8_0: _dequantize_q8_0,
    GGMLQuantizationType.Q4_0: _dequantize_q4_0,
    GGMLQuantizationType.Q4_1: _dequantize_q4_1,
}
