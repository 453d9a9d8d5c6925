"""Per-rank time accounting: busy seconds, the part of them spent in collectives, and a timeline."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BusySpan:
    """One stretch of work on a rank (perf_counter seconds: one clock for all processes of a host)."""

    start: float
    end: float
    micro_batch: int


class RankStats:
    def __init__(self, max_spans: int = 4096) -> None:
        self.busy_s = 0.0
        self.comm_s = 0.0
        self.spans: deque[BusySpan] = deque(maxlen=max_spans)

    @contextmanager
    def busy(self, comm_seconds: Callable[[], float], micro_batch: int = 0) -> Iterator[None]:
        c0, t0 = comm_seconds(), time.perf_counter()
        try:
            yield
        finally:
            t1 = time.perf_counter()
            self.busy_s += t1 - t0
            self.comm_s += comm_seconds() - c0
            self.spans.append(BusySpan(t0, t1, micro_batch))

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.busy_s, self.comm_s], dtype=torch.float64)
