"""Compressed-tensors INT8 W8A8 checkpoints (llm-compressor's ``int-quantized`` format) onto ``Int8Linear``.

The checkpoint's ``config.json`` carries a ``quantization_config``::

    {"quant_method": "compressed-tensors", "format": "int-quantized",
     "config_groups": {"group_0": {"targets": ["Linear"],
         "weights": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel", "dynamic": false},
         "input_activations": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "token",
                               "dynamic": true}}},
     "ignore": ["lm_head"]}

and each quantized linear layer stores ``<layer>.weight`` (int8 [out, in]) and ``<layer>.weight_scale``
([out, 1]). Exactly this scheme is what Pagoda's W8A8 path computes, so the codes load as stored (no
dequantized copy); anything else fails at load with the field and the values supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from pagoda.layers.linear import LinearBase
from pagoda.quantization.gguf_swap import checkpoint_names
from pagoda.quantization.w8a8 import Int8Linear, _replace

QUANT_METHODS = ("compressed-tensors",)
FORMATS = ("int-quantized",)
# field -> the only value supported, for weights and input activations
WEIGHT_SCHEME = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False}
ACTIVATION_SCHEME = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}


@dataclass(frozen=True)
class CompressedTensorsConfig:
    """A validated W8A8 INT8 ``quantization_config``: which checkpoint layers stay dense."""

    ignore: tuple[str, ...] = ()

    def ignores(self, checkpoint_layer: str) -> bool:
        """Whether a layer (e.g. ``model.layers.0.self_attn.q_proj``) is stored dense."""
        for pattern in self.ignore:
            if pattern.startswith("re:"):
                if re.fullmatch(pattern[3:], checkpoint_layer):
                    return True
            elif pattern == checkpoint_layer or checkpoint_layer.endswith("." + pattern):
                return True
        return False


def _unsupported(field: str, value: Any, supported: Any) -> ValueError:
    return ValueError(f"unsupported quantization_config: {field} = {value!r} (Pagoda supports {supported!r})")


def parse_quantization_config(hf_config: dict[str, Any]) -> CompressedTensorsConfig | None:
    """The checkpoint's quantization scheme, None for a dense checkpoint; raises ValueError naming the first
    unsupported field and the values supported."""
    qc = hf_config.get("quantization_config")
    if qc is None:
        return None
    method = qc.get("quant_method")
    if method not in QUANT_METHODS:
        raise _unsupported("quant_method", method, list(QUANT_METHODS))
    if qc.get("format") not in FORMATS:
        raise _unsupported("format", qc.get("format"), list(FORMATS))
    groups = qc.get("config_groups") or {}
    if not groups:
        raise _unsupported("config_groups", groups, "one group targeting 'Linear'")
    for name, group in groups.items():
        if list(group.get("targets") or []) != ["Linear"]:
            raise _unsupported(f"config_groups.{name}.targets", group.get("targets"), ["Linear"])
        for part, scheme in (("weights", WEIGHT_SCHEME), ("input_activations", ACTIVATION_SCHEME)):
            args = group.get(part)
            if not isinstance(args, dict):
                raise _unsupported(f"config_groups.{name}.{part}", args, scheme)
            for field, want in scheme.items():
                got = args.get(field, False if field == "dynamic" else None)
                if got != want:
                    raise _unsupported(f"config_groups.{name}.{part}.{field}", got, want)
    return CompressedTensorsConfig(ignore=tuple(qc.get("ignore") or ()))


def swap_compressed_linears(model: nn.Module, config: CompressedTensorsConfig) -> int:
    """Before loading: replaces every linear layer the checkpoint stores in int8 by an empty ``Int8Linear``
    (its ``weight`` and ``weight_scale`` parameters take the checkpoint tensors); returns how many."""
    swapped = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, LinearBase):
            continue
        parts = [n.removesuffix(".weight") for n in checkpoint_names(model, name)]
        ignored = [config.ignores(p) for p in parts]
        if all(ignored):
            continue
        if any(ignored):
            raise ValueError(f"quantization_config.ignore lists some but not all of the fused layer {name}'s parts "
                             f"{parts}: Pagoda fuses them into one matrix")
        _replace(model, name, Int8Linear(module))
        swapped += 1
    return swapped


def finalize_int8_linears(model: nn.Module, loaded: set[str]) -> None:
    """After loading: checks every int8 layer got its scales (``loaded``: the parameter names set) and
    readies it for the matmul."""
    for name, module in model.named_modules():
        if isinstance(module, Int8Linear):
            if f"{name}.weight_scale" not in loaded:
                raise ValueError(f"the checkpoint has no weight_scale for the int8 layer {name}")
            module.finalize()
