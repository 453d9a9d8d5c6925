"""The engine process's side of the live dashboard: a step timeline, latency samples and snapshots.

It works only while a dashboard is watching (a ``GetDashboard`` arrived in the last
``WATCH_TIMEOUT_S``): with the page closed the engine loop pays one clock read and one comparison
per step. Its own cost is measured where it is spent (per-step records and snapshots, in the
engine process) and reported in every snapshot next to the time spent in ``engine.step()``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from pagoda.engine.request import RequestStatus
from pagoda.engine.step_timeline import StepTimeline
from pagoda.kv_cache.block_map import compact_block_map
from pagoda.server.dashboard_snapshot import DashboardSnapshot, QueueEntry

WATCH_TIMEOUT_S = 10.0  # a dashboard that stopped asking for this long is closed (generous: loaded hosts)
QUEUE_LIMIT = 256  # requests listed per snapshot (counts stay exact)
_LATENCY_SAMPLES = 8192  # per kind, between two snapshots at most


class DashboardFeed:
    def __init__(self, engine: Any, watch_timeout_s: float = WATCH_TIMEOUT_S) -> None:
        self.engine = engine
        self.watch_timeout_s = watch_timeout_s
        self.timeline = StepTimeline()
        self.ttft: deque[tuple[float, float]] = deque(maxlen=_LATENCY_SAMPLES)
        self.itl: deque[tuple[float, float]] = deque(maxlen=_LATENCY_SAMPLES)
        self._last_output: dict[str, float] = {}  # request id -> time of its last output
        self._watched_until = 0.0
        self.feed_s_total = 0.0
        self.step_s_total = 0.0

    def on_step(self, start: float, outputs: list[Any]) -> None:
        """Called by the engine loop after ``engine.step()``, which began at ``start`` (time.monotonic)."""
        now = time.monotonic()
        if now > self._watched_until:
            return
        scheduled = getattr(self.engine, "last_scheduled", None)
        if scheduled is not None:
            self.timeline.record(scheduled, now, now - start)
        for out in outputs:
            last = self._last_output.get(out.request_id)
            if last is not None:
                self.itl.append((now, now - last))
            else:
                m = out.metrics  # a first token of this step (not one from before the dashboard opened)
                if m is not None and m.first_token_time is not None and m.first_token_time >= start:
                    self.ttft.append((now, m.first_token_time - m.arrival_time))
            if out.finished:
                self._last_output.pop(out.request_id, None)
            elif any(o.token_ids for o in out.outputs):
                self._last_output[out.request_id] = now
        self.step_s_total += now - start
        self.feed_s_total += time.monotonic() - now

    def snapshot(self, since_step: int, since_time: float) -> DashboardSnapshot:
        """Steps recorded after ``since_step``, latency samples taken after ``since_time``, and the
        current block map and queue. Marks the dashboard as watching."""
        begin = time.monotonic()
        if begin > self._watched_until:  # opened (again): count from here
            self._last_output.clear()
            self.feed_s_total = self.step_s_total = 0.0
        self._watched_until = begin + self.watch_timeout_s
        stale = begin - 120.0  # a request aborted while watched never finishes here
        for rid in [r for r, t in self._last_output.items() if t < stale]:
            del self._last_output[rid]
        kv = getattr(self.engine, "kv_cache", None)
        block_map = compact_block_map(kv) if kv is not None else None
        queue, counts = self._queue()
        steps = self.timeline.since(since_step)
        ttft, itl = _after(self.ttft, since_time), _after(self.itl, since_time)
        cost = time.monotonic() - begin
        self.feed_s_total += cost
        return DashboardSnapshot(
            taken_at=begin, block_map=block_map, steps=steps, queue=queue, num_running=counts["running"],
            num_waiting=counts["waiting"], num_preempted=counts["preempted"], ttft_s=ttft, itl_s=itl,
            cost_s=cost, feed_s_total=self.feed_s_total, step_s_total=self.step_s_total)

    def _queue(self) -> tuple[list[QueueEntry], dict[str, int]]:
        counts = {"running": 0, "waiting": 0, "preempted": 0}
        entries: list[QueueEntry] = []
        for scheduler in getattr(self.engine, "schedulers", ()):
            for status, requests in (("running", scheduler.running), ("waiting", scheduler.waiting)):
                for r in requests:
                    kind = "preempted" if r.status is RequestStatus.PREEMPTED else status
                    counts[kind] += 1
                    if len(entries) < QUEUE_LIMIT:
                        entries.append(QueueEntry(r.request_id, kind, r.num_prompt_tokens, r.num_computed_tokens,
                                                  r.num_output_tokens, r.max_tokens, r.num_cached_tokens))
        return entries, counts


def _after(samples: deque[tuple[float, float]], since: float) -> list[tuple[float, float]]:
    out = []
    for item in reversed(samples):
        if item[0] <= since:
            break
        out.append(item)
    out.reverse()
    return out

