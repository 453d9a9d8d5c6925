"""Multi-LoRA serving: PEFT adapters on the base model's fused linears, many adapters in one batch."""

from pagoda.lora.config import LoRAConfig
from pagoda.lora.request import LoRARequest

__all__ = ["LoRAConfig", "LoRARequest"]
