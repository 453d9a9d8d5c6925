"""The module swap for ``quantization="gguf"``, per linear layer by the GGML types of its checkpoint parts:

- all Q4_0 / Q4_1 / Q4_K: ``Int4Linear`` (packed nibbles);
- all Q8_0: ``Q8Linear`` (int8 VNNI, per-32 scales);
- any other mix of Q4_0 / Q4_1 / Q4_K / Q5_K / Q6_K / Q8_0 (Q5_K, Q6_K, a Q4_K_M file's fused q/k/v with a Q6_K
  v): ``KQuantLinear`` (one byte a weight, int8 VNNI, a scale and offset per sub-block);

the VNNI layers where the kernel runs. Other quantized tensors (Q2_K, Q3_K, Q5_0, ...) are dequantized on load.
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType
from torch import nn

from pagoda.kernels import cpu_kernels
from pagoda.layers.linear import LinearBase
from pagoda.quantization.gguf_int4 import PACKABLE, Int4Linear
from pagoda.quantization.gguf_kquant import KQUANT_TYPES, KQuantLinear, sub_block
from pagoda.quantization.gguf_q8 import Q8_TYPES, Q8Linear


def checkpoint_names(model: nn.Module, module_name: str) -> list[str]:
    """The checkpoint tensors a (possibly fused) linear layer is loaded from."""
    leaf = module_name.rsplit(".", 1)[-1]
    parts = [ckpt for ckpt, fused, _ in getattr(model, "stacked_params", []) if fused == leaf]
    if not parts:
        return [f"{module_name}.weight"]
    return [f"{module_name[: -len(leaf)]}{part}.weight" for part in parts]


def swap_int4_linears(model: nn.Module, tensor_types: dict[str, GGMLQuantizationType], dtype,
                      deterministic: bool, packed_only: bool = False) -> int:
    """Replaces packable linear layers in place; returns how many were swapped. ``packed_only``
    (weights_memory="packed") keeps no dequantized copy beside the packed 4-bit weights."""
    swapped = 0
    vnni = q8_kernel_available()
    for name, module in list(model.named_modules()):
        if not isinstance(module, LinearBase):
            continue
        types = [tensor_types.get(n) for n in checkpoint_names(model, name)]
        packed: nn.Module | None = None
        if all(t in PACKABLE for t in types):
            packed = Int4Linear(module, dtype, deterministic, packed_only)
        elif vnni and module.in_features % 32 == 0 and all(t in Q8_TYPES for t in types):
            packed = Q8Linear(module)
        elif vnni and module.in_features % 32 == 0 and all(t in KQUANT_TYPES for t in types):
            packed = KQuantLinear(module, min(sub_block(t) for t in types if t is not None), dtype, deterministic,
                                  packed_only)
        if packed is not None:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, packed)
            swapped += 1
    return swapped


def q8_kernel_available() -> bool:
    """Whether Q8_0 and K-quant matrices can stay packed here (the kernels need AVX-512 VNNI)."""
    return cpu_kernels.available() and bool(torch.ops.pagoda.int8_block_linear_available())


def finalize_int4_linears(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, (Int4Linear, Q8Linear, KQuantLinear)):
            module.finalize()
