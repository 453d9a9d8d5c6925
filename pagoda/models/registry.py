"""Architecture name (config.json "architectures") -> model class."""

from __future__ import annotations

from torch import nn

from pagoda.registry import Registry

MODELS: Registry[type[nn.Module]] = Registry("architecture")


# Mistral and Qwen2 are Llama with other defaults (Qwen2: q/k/v biases, set in ModelConfig).
# Mistral's sliding window is not applied: outputs match only within the window (4096 tokens).
@MODELS.register("LlamaForCausalLM")
@MODELS.register("MistralForCausalLM")
@MODELS.register("Qwen2ForCausalLM")
def _llama() -> type[nn.Module]:
    from pagoda.models.llama import LlamaForCausalLM

    return LlamaForCausalLM
