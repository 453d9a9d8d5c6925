"""Per-rank time accounting: busy seconds, the parts of them spent in collectives and waiting on
the previous pipeline stage, and a timeline of busy spans."""

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
        self.wait_s = 0.0
        self.max_spans = max_spans
        self.spans: deque[BusySpan] = deque(maxlen=max_spans)

    @contextmanager
    def busy(self, comm_seconds: Callable[[], float], wait_seconds: Callable[[], float] = lambda: 0.0,
             micro_batch: int = 0) -> Iterator[None]:
        c0, w0, t0 = comm_seconds(), wait_seconds(), time.perf_counter()
        try:
            yield
        finally:
            t1 = time.perf_counter()
            waited = wait_seconds() - w0
            self.busy_s += t1 - t0
            self.comm_s += comm_seconds() - c0
            self.wait_s += waited
            # the span starts when the activations arrived: the wait before is bubble, not work
            self.spans.append(BusySpan(t0 + waited, t1, micro_batch))

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.busy_s, self.comm_s, self.wait_s], dtype=torch.float64)

    def spans_tensor(self) -> torch.Tensor:
        """The recent spans as a fixed-size [max_spans, 3] table (NaN rows unused), for an all-gather."""
        out = torch.full((self.max_spans, 3), float("nan"), dtype=torch.float64)
        if self.spans:
            out[:len(self.spans)] = torch.tensor([(s.start, s.end, s.micro_batch) for s in self.spans],
                                                 dtype=torch.float64)
        return out


def spans_from_tensor(table: torch.Tensor) -> list[BusySpan]:
    return [BusySpan(float(a), float(b), int(k)) for a, b, k in table.tolist() if a == a]  # a == a: not NaN
