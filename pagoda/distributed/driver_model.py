"""Rank 0's model shard, announcing each LM-head call so that the workers join its all-gather."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from pagoda.distributed.messages import LogitsMessage, Message
from pagoda.engine.model_runner import StepModel


class DriverModel:
    """Called like the stage module it wraps; ``compute_logits`` first tells the other ranks."""

    def __init__(self, model: StepModel, publish: Callable[[Message], None]) -> None:
        self.model = model
        self.publish = publish
        self.attention_backend = model.attention_backend

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor | None:
        return self.model(*args, **kwargs)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        self.publish(LogitsMessage(hidden))
        return self.model.compute_logits(hidden)
