"""A scheduler's monotonic counters, which metrics read."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SchedulerCounters:
    num_steps: int = 0
    prompt_tokens_computed: int = 0
    generation_tokens: int = 0
    num_preemptions: int = 0
    jump_forward_tokens: int = 0  # tokens appended without a model step (grammar-forced)
