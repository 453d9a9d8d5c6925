"""Architecture name (config.json "architectures") -> model class."""

from __future__ import annotations

from torch import nn

from pagoda.models.llama import LlamaForCausalLM

# Mistral and Qwen2 are Llama with other defaults (Qwen2: q/k/v biases, set in ModelConfig).
# Mistral's sliding window is not applied: outputs match only within the window (4096 tokens).
MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
}


def get_model_class(architecture: str) -> type[nn.Module]:
    if architecture not in MODEL_REGISTRY:
        raise ValueError(f"unsupported architecture {architecture!r}; supported: {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[architecture]
