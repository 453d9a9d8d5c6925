"""Architecture name (config.json "architectures") -> model class."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagoda.registry import Registry

if TYPE_CHECKING:
    from pagoda.models.llama import LlamaForCausalLM

# Every architecture so far is a Llama-family decoder (ModelConfig's shape), built by one class.
MODELS: Registry[type[LlamaForCausalLM]] = Registry("architecture")


# Mistral and Qwen2 are Llama with other defaults (Qwen2: q/k/v biases, set in ModelConfig).
# Mistral's sliding window is not applied: outputs match only within the window (4096 tokens).
@MODELS.register("LlamaForCausalLM")
@MODELS.register("MistralForCausalLM")
@MODELS.register("Qwen2ForCausalLM")
def _llama() -> type[LlamaForCausalLM]:
    from pagoda.models.llama import LlamaForCausalLM

    return LlamaForCausalLM
