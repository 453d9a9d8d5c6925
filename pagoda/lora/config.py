"""LoRA limits, resolved once from ``EngineArgs``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoRAConfig:
    """``max_loras``: adapters resident at once (slots; also the most distinct adapters in one
    step); ``max_lora_rank``: the largest rank accepted at load; ``max_cpu_loras``: adapters kept in
    host memory for swapping into slots (None: every adapter used so far)."""

    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int | None = None
