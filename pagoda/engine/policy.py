"""Scheduling policies: the order waiting requests are admitted in and who is preempted first.

All policies share a guard against starvation: a request that has waited longer than
``max_wait_s`` is admitted before any newer one, whatever the policy says.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from pagoda.engine.request import Request


class SchedulingPolicy(ABC):
    """``order`` returns the waiting requests in admission order (it must not drop any);
    ``order_running`` the running ones in service order: when blocks run out, the last of them
    is preempted first."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s

    def order(self, waiting: Sequence[Request], now: float | None = None) -> list[Request]:
        now = time.monotonic() if now is None else now
        starving = [r for r in waiting if now - r.metrics.arrival_time > self.max_wait_s]
        if not starving:
            return self._order(list(waiting))
        starving.sort(key=lambda r: r.metrics.arrival_time)
        ids = {id(r) for r in starving}
        return starving + self._order([r for r in waiting if id(r) not in ids])

    @abstractmethod
    def _order(self, waiting: list[Request]) -> list[Request]: ...

    def order_running(self, running: list[Request]) -> list[Request]:
        return running  # admission order: the newest is preempted first


class FCFSPolicy(SchedulingPolicy):
    """First come, first served (preempted requests keep their place at the front)."""

    def _order(self, waiting: list[Request]) -> list[Request]:
        return waiting


class PriorityPolicy(SchedulingPolicy):
    """Lower ``priority`` runs first; preemption takes the lowest priority, newest first."""

    def _order(self, waiting: list[Request]) -> list[Request]:
        return sorted(waiting, key=lambda r: (r.priority, r.metrics.arrival_time))

    def order_running(self, running: list[Request]) -> list[Request]:
        return sorted(running, key=lambda r: (r.priority, r.metrics.arrival_time))


class LongestPrefixMatchPolicy(SchedulingPolicy):
    """SGLang's ``lpm``: the request with the longest cached prefix first, so shared prefixes are
    reused while they are still cached. Falls back to FCFS for long queues (matching costs)."""

    def __init__(self, max_wait_s: float, cached_tokens: Callable[[Request], int], max_queue: int = 128) -> None:
        super().__init__(max_wait_s)
        self.cached_tokens = cached_tokens
        self.max_queue = max_queue

    def _order(self, waiting: list[Request]) -> list[Request]:
        if len(waiting) > self.max_queue:
            return waiting
        return sorted(waiting, key=lambda r: -self.cached_tokens(r))  # stable: FCFS among equals


POLICIES = ("fcfs", "priority", "lpm")
