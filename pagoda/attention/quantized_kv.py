"""Quantized KV cache blocks: ``kv_cache_dtype="int8"`` or ``"fp8"`` (E4M3), one scale per token and head.

Each cached (token, head) row holds its ``head_dim`` codes followed by its scale as float16 (2 bytes), in a
cache tensor of the code dtype whose last dimension is ``head_dim + 2``: a block is still one slice of the
pool, so block copies (copy-on-write), the block tables and the prefix cache work unchanged. A row costs
``head_dim + 2`` bytes instead of ``2 * head_dim`` in bfloat16: the pool holds ``2 D / (D + 2)`` times the
tokens (1.94x at D = 64) in the same memory.

int8: scale = amax / 127, codes = rne(x / scale). fp8: scale = amax / 448, codes = E4M3(x / scale). The scale
is rounded up to float16 first and the codes computed with the rounded scale, so codes * scale is what was
meant and no code is clipped.
Attention reads the blocks where they are and dequantizes on the fly (the C++ kernels) or after gathering
(the portable path).
"""

from __future__ import annotations

import torch

KV_CACHE_DTYPES = ("auto", "int8", "fp8")
CODE_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}
SCALE_BYTES = 2
MIN_SCALE = 2.0 ** -24  # float16's smallest subnormal: an all-zero row still has a scale


def check_kv_cache_dtype(kv_cache_dtype: str) -> None:
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {kv_cache_dtype!r}")


def cache_storage(kv_cache_dtype: str, model_dtype: torch.dtype, head_dim: int) -> tuple[torch.dtype, int]:
    """(tensor dtype, last dimension) of a KV cache tensor."""
    check_kv_cache_dtype(kv_cache_dtype)
    if kv_cache_dtype == "auto":
        return model_dtype, head_dim
    if head_dim % 2:
        raise ValueError(f"a quantized KV cache needs an even head_dim, got {head_dim}")
    return CODE_DTYPES[kv_cache_dtype], head_dim + SCALE_BYTES


def bytes_per_token_head(kv_cache_dtype: str, model_dtype: torch.dtype, head_dim: int) -> int:
    dtype, last = cache_storage(kv_cache_dtype, model_dtype, head_dim)
    return last * torch.empty(0, dtype=dtype).element_size()


def is_quantized(cache: torch.Tensor) -> bool:
    return cache.dtype in QMAX


def quantize(x: torch.Tensor, code_dtype: torch.dtype) -> torch.Tensor:
    """[..., D] float -> [..., D + 2] rows of codes and a float16 scale, in ``code_dtype``."""
    xf = x.float()
    exact = (xf.abs().amax(-1, keepdim=True) / QMAX[code_dtype]).clamp_(min=MIN_SCALE)
    scale = exact.to(torch.float16)
    # rounded up, never down, so that no code passes the format's largest (the next float16 is one bit up)
    scale = (scale.view(torch.int16) + (scale.float() < exact).to(torch.int16)).view(torch.float16)
    scaled = xf / scale.float()
    if code_dtype == torch.int8:
        codes = torch.round(scaled).clamp_(-127, 127).to(torch.int8)
    else:
        codes = scaled.clamp_(-448, 448).to(code_dtype)
    return torch.cat([codes.view(torch.uint8), scale.view(torch.uint8)], dim=-1).view(code_dtype)


def dequantize(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[..., D + 2] cache rows -> [..., D] values in ``dtype``."""
    raw = rows.view(torch.uint8)
    d = raw.shape[-1] - SCALE_BYTES
    codes = raw[..., :d].view(rows.dtype).float()
    scale = raw[..., d:].contiguous().view(torch.float16).float()
    return (codes * scale).to(dtype)


def scales(rows: torch.Tensor) -> torch.Tensor:
    """[..., D + 2] cache rows -> their float32 scales [..., 1]."""
    raw = rows.view(torch.uint8)
    return raw[..., raw.shape[-1] - SCALE_BYTES:].contiguous().view(torch.float16).float()
