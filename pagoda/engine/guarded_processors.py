"""A request's logits processors run as one for the sampler, so one that raises fails only its
own request instead of the whole step."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pagoda.sample.sampler import checks_after_draw
from pagoda.sampling_params import SamplingParams


def guarded_processors(request_id: str, params: SamplingParams, failed: dict[str, str]) -> GuardedProcessors:
    """``params``' processors as one; failures are recorded in ``failed[request_id]``. A mask the
    sampler may check after the draw keeps that ability (``verify_draw``)."""
    cls = GuardedMasks if checks_after_draw(params) else GuardedProcessors
    return cls(request_id, params.logits_processors, failed)


class GuardedProcessors:
    """A request's logits processors run as one; an exception is recorded for the request (which
    then fails) instead of crashing the step."""

    def __init__(self, request_id: str, processors: list, failed: dict[str, str]) -> None:
        self.request_id, self.processors, self.failed = request_id, processors, failed

    def __call__(self, token_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        try:
            for processor in self.processors:
                logits = processor(token_ids, logits)
        except Exception as exc:  # noqa: BLE001  (user code: report, never crash the step)
            self._fail(exc)
        return logits

    def _fail(self, exc: Exception) -> None:
        self.failed[self.request_id] = f"logits processor failed: {type(exc).__name__}: {exc}"


class GuardedMasks(GuardedProcessors):
    """One mask that verifies a drawn token (the sampler checks the draw before masking)."""

    def verify_draw(self, token_ids: Sequence[int], token_id: int) -> int | None:
        try:
            return self.processors[0].verify_draw(token_ids, token_id)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return token_id  # the request fails; no point masking its row
