"""The module swap for ``quantization="gguf"``: linear layers whose every checkpoint part is Q4_0 or
Q4_1 become ``Int4Linear``, all Q8_0 ``Q8Linear`` (where the VNNI kernel runs); other quantized tensors
(K-quants, mixed types) are dequantized on load."""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType
from torch import nn

from pagoda.kernels import cpu_kernels
from pagoda.layers.linear import LinearBase
from pagoda.quantization.gguf_int4 import PACKABLE, Int4Linear
from pagoda.quantization.gguf_q8 import Q8_TYPES, Q8Linear


def checkpoint_names(model: nn.Module, module_name: str) -> list[str]:
    """The checkpoint tensors a (possibly fused) linear layer is loaded from."""
    leaf = module_name.rsplit(".", 1)[-1]
    parts = [ckpt for ckpt, fused, _ in getattr(model, "stacked_params", []) if fused == leaf]
    if not parts:
        return [f"{module_name}.weight"]
    return [f"{module_name[: -len(leaf)]}{part}.weight" for part in parts]


def swap_int4_linears(model: nn.Module, tensor_types: dict[str, GGMLQuantizationType], dtype,
                      deterministic: bool) -> int:
    """Replaces packable linear layers in place; returns how many were swapped."""
    swapped = 0
    q8 = q8_kernel_available()
    for name, module in list(model.named_modules()):
        if not isinstance(module, LinearBase):
            continue
        types = [tensor_types.get(n) for n in checkpoint_names(model, name)]
        packed: nn.Module | None = None
        if all(t in PACKABLE for t in types):
            packed = Int4Linear(module, dtype, deterministic)
        elif q8 and all(t in Q8_TYPES for t in types) and module.in_features % 32 == 0:
            packed = Q8Linear(module)
        if packed is not None:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, packed)
            swapped += 1
    return swapped


def q8_kernel_available() -> bool:
    """Whether Q8_0 matrices can stay packed here (the kernel needs AVX-512 VNNI)."""
    return cpu_kernels.available() and bool(torch.ops.pagoda.int8_block_linear_available())


def finalize_int4_linears(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (Int4Linear, Q8Linear)):
            module.finalize()
