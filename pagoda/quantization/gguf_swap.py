"""The module swap for ``quantization="gguf"``: linear layers whose every checkpoint part is Q4_0 or
Q4_1 become ``Int4Linear``; other quantized tensors (Q8_0, K-quants) are dequantized on load."""

from __future__ import annotations

from gguf import GGMLQuantizationType
from torch import nn

from pagoda.layers.linear import LinearBase
from pagoda.quantization.gguf_int4 import PACKABLE, Int4Linear


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
    for name, module in list(model.named_modules()):
        if not isinstance(module, LinearBase):
            continue
        if all(tensor_types.get(n) in PACKABLE for n in checkpoint_names(model, name)):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, Int4Linear(module, dtype, deterministic))
            swapped += 1
    return swapped


def finalize_int4_linears(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, Int4Linear):
            module.finalize()
