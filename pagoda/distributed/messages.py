"""Typed messages from the driver to the worker ranks, and their wire format.

Tensors travel as raw bytes (``reducer_override``), not through torch's own pickling, which
round-trips every storage through ``torch.save``.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from pagoda.attention.metadata import AttentionMetadata
from pagoda.lora.manager import LoRAStep


@dataclass
class MicroBatch:
    """What every rank needs to run the model over part of a step (the driver's request objects stay home)."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    metadata: AttentionMetadata
    block_copies: list[tuple[int, int]]
    lora: LoRAStep | None = None  # the rows' adapter slots, and adapters to place first


@dataclass
class StepMessage:
    """One engine step, in micro-batches that pipeline stages work on one after another (one without PP)."""

    micro_batches: list[MicroBatch]


@dataclass
class LogitsMessage:
    """Hidden rows the driver is about to turn into logits: the LM head's all-gather needs every rank."""

    hidden: torch.Tensor


@dataclass
class StatsMessage:
    """Asks each worker to publish its busy / communication seconds (a collective: all ranks answer)."""


@dataclass
class TimelineMessage:
    """Asks each worker for its recent busy spans (a collective: all ranks answer)."""


@dataclass
class ShutdownMessage:
    pass


Message = StepMessage | LogitsMessage | StatsMessage | TimelineMessage | ShutdownMessage


def _tensor(data: np.ndarray, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(data).view(getattr(torch, dtype)).view(shape)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, torch.Tensor):
            t = obj.detach().contiguous().view(-1)
            return _tensor, (t.view(torch.uint8).numpy(), str(t.dtype).removeprefix("torch."), tuple(obj.shape))
        return NotImplemented


def encode(message: Message) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
    return buf.getvalue()


def decode(payload: bytes) -> Message:
    return pickle.loads(payload)
