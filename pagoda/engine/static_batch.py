"""Static batching's results: a batch's finished requests come back together when it ends."""

from __future__ import annotations

import time
from collections.abc import Hashable

from pagoda.outputs import RequestOutput


class StaticBatchResults:
    """Holds each batch's finished outputs until its last request finishes, as a batched
    ``generate`` does (a short answer waits for the longest one); unfinished outputs pass through.
    One batch per scheduler (a pipeline runs one per virtual engine)."""

    def __init__(self) -> None:
        self._held: dict[Hashable, list[RequestOutput]] = {}

    @property
    def holding(self) -> bool:
        return any(self._held.values())

    def release(self, batch: Hashable, outputs: list[RequestOutput], batch_running: bool) -> list[RequestOutput]:
        """``outputs`` of ``batch``'s step, less the finished ones, which are held; all held ones too
        once the batch has nothing running (their finished_time is then)."""
        held = self._held.setdefault(batch, [])
        held += [o for o in outputs if o.finished]
        outputs = [o for o in outputs if not o.finished]
        if held and not batch_running:
            now = time.monotonic()
            for o in held:
                o.metrics.finished_time = now
            outputs += held
            held.clear()
        return outputs
