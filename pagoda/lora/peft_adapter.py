"""Reads a PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``).

What the engine can run is checked here, once, at load: plain LoRA on the attention and MLP
projections, rank at most ``max_lora_rank``, no bias terms, no DoRA. Anything else is refused
with a ``LoRALoadError`` naming it, before the adapter reaches a slot.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import torch
from safetensors.torch import load_file

SUPPORTED_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_TENSOR = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[^.]+)?\.weight$")


class LoRALoadError(ValueError):
    """An adapter that cannot be loaded: missing files, an unsupported variant or module, a rank above
    the limit, or tensors that do not fit the base model. The message names the problem."""


@dataclass(frozen=True)
class PeftAdapter:
    """An adapter in float32: per checkpoint module name (``model.layers.0.self_attn.q_proj``),
    A [r, in] and B [out, r] with the scaling (alpha / r, or alpha / sqrt(r) for rsLoRA) folded into B."""

    rank: int
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]


def read_peft_adapter(path: str, max_rank: int) -> PeftAdapter:
    config_path = os.path.join(path, "adapter_config.json")
    weights_path = os.path.join(path, "adapter_model.safetensors")
    if not os.path.isdir(path):
        raise LoRALoadError(f"LoRA adapter directory {path!r} does not exist")
    if not os.path.isfile(config_path):
        raise LoRALoadError(f"LoRA adapter {path!r} has no adapter_config.json")
    if not os.path.isfile(weights_path):
        extra = " (adapter_model.bin is not read: save with safe_serialization)" if os.path.isfile(
            os.path.join(path, "adapter_model.bin")) else ""
        raise LoRALoadError(f"LoRA adapter {path!r} has no adapter_model.safetensors{extra}")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise LoRALoadError(f"LoRA adapter {path!r}: adapter_config.json is unreadable: {exc}") from None
    rank, alpha, rslora = _check_config(config, path, max_rank)
    try:
        tensors = load_file(weights_path)
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types)
        raise LoRALoadError(f"LoRA adapter {path!r}: adapter_model.safetensors is unreadable: {exc}") from None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _TENSOR.match(key)
        if m is None:
            raise LoRALoadError(f"LoRA adapter {path!r}: tensor {key!r} is not a lora_A/lora_B weight "
                                f"(embedding LoRA, DoRA magnitudes and bias terms are not supported)")
        module = m["module"]
        if module.rpartition(".")[2] not in SUPPORTED_MODULES:
            raise LoRALoadError(f"LoRA adapter {path!r}: target module {module!r} is not supported "
                                f"(supported: {', '.join(SUPPORTED_MODULES)})")
        parts.setdefault(module, {})[m["part"]] = tensor
    if not parts:
        raise LoRALoadError(f"LoRA adapter {path!r} holds no LoRA weights")
    modules = {}
    for module, ab in parts.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise LoRALoadError(f"LoRA adapter {path!r}: module {module!r} lacks its lora_A or lora_B weight")
        a, b = ab["lora_A"].float(), ab["lora_B"].float()
        r = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or b.shape[1] != r:
            raise LoRALoadError(f"LoRA adapter {path!r}: module {module!r} has lora_A {tuple(a.shape)} and "
                                f"lora_B {tuple(b.shape)}, not [r, in] and [out, r]")
        if r > max_rank:
            raise LoRALoadError(f"LoRA adapter {path!r}: rank {r} of {module!r} exceeds max_lora_rank {max_rank}")
        scaling = alpha / (math.sqrt(r) if rslora else r)
        modules[module] = (a.contiguous(), (b * scaling).contiguous())
    return PeftAdapter(rank, modules)


def _check_config(config: dict, path: str, max_rank: int) -> tuple[int, float, bool]:
    def refuse(what: str) -> LoRALoadError:
        return LoRALoadError(f"LoRA adapter {path!r}: {what} is not supported")

    if config.get("peft_type", "LORA") != "LORA":
        raise refuse(f"peft_type {config.get('peft_type')!r} (only LORA)")
    if config.get("use_dora"):
        raise refuse("DoRA (use_dora)")
    if config.get("bias", "none") != "none":
        raise refuse(f"bias={config.get('bias')!r} (only 'none')")
    if config.get("lora_bias"):
        raise refuse("lora_bias")
    if config.get("modules_to_save"):
        raise refuse(f"modules_to_save {config['modules_to_save']!r}")
    if config.get("alpha_pattern"):
        raise refuse("alpha_pattern")
    if config.get("layer_replication"):
        raise refuse("layer_replication")
    if config.get("fan_in_fan_out"):
        raise refuse("fan_in_fan_out")
    for variant in ("use_qalora", "use_bdlora"):
        if config.get(variant):
            raise refuse(variant)
    targets = config.get("target_modules")
    if isinstance(targets, list):
        unknown = [t for t in targets if t not in SUPPORTED_MODULES]
        if unknown:
            raise LoRALoadError(f"LoRA adapter {path!r}: target modules {unknown} are not supported "
                                f"(supported: {', '.join(SUPPORTED_MODULES)})")
    rank = config.get("r")
    alpha = config.get("lora_alpha", rank)
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, int | float):
        raise LoRALoadError(f"LoRA adapter {path!r}: adapter_config.json needs an integer r and a lora_alpha")
    ranks = [rank, *(config.get("rank_pattern") or {}).values()]
    if max(ranks) > max_rank:
        raise LoRALoadError(f"LoRA adapter {path!r}: rank {max(ranks)} exceeds max_lora_rank {max_rank}")
    return rank, float(alpha), bool(config.get("use_rslora"))
