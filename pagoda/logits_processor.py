"""The logits-processor hooks, as protocols: what the sampler and the engine may call on a request's
processors. Grammar masks implement all of them; a plain callable only the first.

- ``LogitsProcessor``: ``(output token ids so far, logits row [vocab]) -> logits row``; runs before
  sampling (after logit_bias and penalties).
- ``DrawVerifier``: a mask that can check one token drawn from the unmasked row
  (``verify_draw(output_token_ids, token_id) -> token | None``), so the sampler masks only refused
  draws.
- ``TokenForcer``: ``forced_tokens(output_token_ids) -> list[int]``, the tokens the constraint leaves
  no choice about; the engine appends them without a model step (jump-forward). Never raises.
- ``CloneableProcessor``: a stateful processor gives each of a request's n > 1 samples a fresh copy.
- ``PreparingProcessor``: a processor that is not usable yet (a grammar compiling in the background)
  says so with ``ready()``; the scheduler leaves its request waiting until it is, and runs the others
  meanwhile (the request waits, not the batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@runtime_checkable
class LogitsProcessor(Protocol):
    def __call__(self, output_token_ids: Sequence[int], logits: torch.Tensor, /) -> torch.Tensor: ...


@runtime_checkable
class DrawVerifier(Protocol):
    def verify_draw(self, output_token_ids: Sequence[int], token_id: int, /) -> int | None: ...


@runtime_checkable
class TokenForcer(Protocol):
    def forced_tokens(self, output_token_ids: Sequence[int], /) -> list[int]: ...


@runtime_checkable
class CloneableProcessor(Protocol):
    def clone(self) -> LogitsProcessor: ...


@runtime_checkable
class PreparingProcessor(Protocol):
    def ready(self) -> bool: ...


def processors_ready(processors: Sequence[object]) -> bool:
    """Whether every processor that may still be preparing (``PreparingProcessor``) is ready."""
    for p in processors:
        ready = getattr(p, "ready", None)
        if ready is not None and not ready():
            return False
    return True
