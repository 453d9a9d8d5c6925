"""PEFT LoRA adapters made by peft itself on a base model, with non-zero B (``init_lora_weights=False``)."""

from __future__ import annotations

import json
import os

import torch

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# three adapters that differ in rank, alpha, rsLoRA and targets
VARIANTS = {
    "all-r8": dict(r=8, lora_alpha=16, target_modules=ALL),
    "qv-r4-rslora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_rslora=True),
    "mlp-k-o-r16": dict(r=16, lora_alpha=24, target_modules=["k_proj", "o_proj", "gate_proj", "up_proj",
                                                             "down_proj"]),
}


def load_base(base: str, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM

    if gguf_file is not None:
        return AutoModelForCausalLM.from_pretrained(base, gguf_file=gguf_file, dtype=torch.float32).eval()
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()


def make_adapter(base: str, out_dir: str, seed: int, gguf_file: str | None = None, **lora_options) -> str:
    """Saves a peft adapter (random A and B) for the model at ``base``; returns its directory."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(load_base(base, gguf_file), LoraConfig(init_lora_weights=False, **lora_options))
    model.save_pretrained(out_dir)
    return out_dir


def peft_reference(base: str, adapter: str, gguf_file: str | None = None):
    """peft's own model with the saved adapter, for teacher-forced logits."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(base, gguf_file), adapter).eval()


def edit_config(adapter: str, **changes) -> None:
    path = os.path.join(adapter, "adapter_config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)
