"""The HTTP process's side of the live dashboard: one poller, many watchers, JSON frames.

While at least one dashboard is open, the hub asks every engine (one, or each data-parallel
replica) for a snapshot at most ``MAX_UPDATES_PER_S`` times a second; a snapshot is answered after
the engine's current step, so slow steps lower the rate further. Every watcher gets the newest
frame only (a slow browser skips frames instead of queueing them). The hub keeps the last minute
of latency samples and counters, so percentiles and rates cost the engine nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pagoda.distributed.parallel_stats import ParallelStats
from pagoda.engine.stats import EngineStats
from pagoda.server.dashboard_snapshot import DashboardSnapshot

logger = logging.getLogger(__name__)

MAX_UPDATES_PER_S = 10.0
WINDOW_S = 60.0  # latency percentiles, rates and hit rate are over this last stretch
RECENT_S = 5.0  # the "now" throughput
IDLE_FRAME_S = 1.0  # with nothing changed, a frame at most this often (a heartbeat)
_PARALLEL_WINDOW_S = 10.0


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float | None]:
    """Nearest-rank percentiles (``p50`` ...), None without samples."""
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for q in qs:
        out[f"p{q:g}"] = ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else None
    return out


@dataclass
class _Replica:
    since_step: int = -1
    since_time: float = 0.0
    parallel: deque[tuple[float, ParallelStats]] = field(default_factory=deque)


@dataclass(eq=False)
class _Watcher:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    frame: str = ""


class DashboardHub:
    def __init__(self, client: Any, model_name: str, max_updates_per_s: float = MAX_UPDATES_PER_S) -> None:
        self.client = client
        self.model_name = model_name
        self.interval_s = 1.0 / max_updates_per_s
        self.engines: list[Any] = list(getattr(client, "replicas", None) or [client])
        self._replicas = [_Replica() for _ in self.engines]
        self._ttft: deque[tuple[float, float]] = deque()
        self._itl: deque[tuple[float, float]] = deque()
        self._counters: deque[tuple[float, EngineStats]] = deque()
        self._watchers: set[_Watcher] = set()
        self._poller: asyncio.Task | None = None
        self.frames_sent = 0

    async def frames(self) -> AsyncIterator[str]:
        """The newest frame each time one is ready, for as long as the caller iterates."""
        watcher = _Watcher()
        self._watchers.add(watcher)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        try:
            while True:
                await watcher.event.wait()
                watcher.event.clear()
                yield watcher.frame
        finally:
            self._watchers.discard(watcher)

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        last_key: object = None
        last_sent = -math.inf
        while self._watchers:
            begin = loop.time()
            try:
                frame, key = await self.take_frame()
            except Exception as e:  # noqa: BLE001 - a dead or stuck engine: tell the page, keep trying
                logger.warning("dashboard: no snapshot: %s", e)
                frame, key = json.dumps({"error": f"{type(e).__name__}: {e}"}), None
                await asyncio.sleep(1.0)
            if key is None or key != last_key or begin - last_sent >= IDLE_FRAME_S:
                last_key, last_sent = key, begin
                self.frames_sent += 1
                for w in self._watchers:
                    w.frame = frame
                    w.event.set()
            await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - begin)))

    async def take_frame(self) -> tuple[str, object]:
        """One frame (JSON text) from fresh snapshots of every engine, and a key that is equal for
        two frames showing the same thing."""
        snaps: list[DashboardSnapshot] = []
        for engine, rep in zip(self.engines, self._replicas):
            snap = await engine.get_dashboard(rep.since_step, rep.since_time)
            if snap.steps:
                rep.since_step = snap.steps[-1].index
            rep.since_time = snap.taken_at
            snaps.append(snap)
        now = time.monotonic()
        for snap in snaps:
            self._ttft.extend(snap.ttft_s)
            self._itl.extend(snap.itl_s)
        stats = [getattr(e, "latest_stats", None) for e in self.engines]
        total = self.client.latest_stats
        if total is not None:
            self._counters.append((now, total))
        self._trim(now)
        frame = {
            "model": self.model_name,
            "time": time.time(),
            "replicas": [self._replica_frame(i, s, st) for i, (s, st) in enumerate(zip(snaps, stats))],
            "throughput": self._throughput(),
            "latency": {"window_s": WINDOW_S,
                        "ttft": {**percentiles([v for _, v in self._ttft]), "n": len(self._ttft)},
                        "itl": {**percentiles([v for _, v in self._itl]), "n": len(self._itl)}},
            "cache": self._cache(total),
            "parallel": self._parallel(now, stats),
        }
        key = (tuple((s.block_map.state if s.block_map else "", tuple(s.block_map.owners) if s.block_map else (),
                      s.num_running, s.num_waiting, bool(s.steps)) for s in snaps))
        return json.dumps(frame, separators=(",", ":")), key

    def _trim(self, now: float) -> None:
        for samples in (self._ttft, self._itl, self._counters):
            while samples and samples[0][0] < now - WINDOW_S:
                samples.popleft()

    @staticmethod
    def _replica_frame(index: int, snap: DashboardSnapshot, stats: EngineStats | None) -> dict[str, Any]:
        bm = snap.block_map
        return {
            "replica": index,
            "blocks": None if bm is None else {"num_blocks": bm.num_blocks, "block_size": bm.block_size,
                                               "state": bm.state, "owner": bm.owner, "owners": bm.owners},
            # one row per step: index, duration (ms), batch size, prefill, decode, jump-forward, speculative,
            # preempted
            "steps": [[s.index, round(s.duration_s * 1e3, 3), s.batch_size, s.prefill_tokens, s.decode_tokens,
                       s.jump_forward_tokens, s.speculative_tokens, s.num_preempted] for s in snap.steps],
            "queue": [{"id": q.request_id, "status": q.status, "prompt": q.num_prompt_tokens,
                       "computed": q.num_computed_tokens, "output": q.num_output_tokens, "max": q.max_tokens,
                       "cached": q.num_cached_tokens} for q in snap.queue],
            "counts": {"running": snap.num_running, "waiting": snap.num_waiting, "preempted": snap.num_preempted,
                       "steps_total": stats.num_steps if stats else None,
                       "preemptions_total": stats.num_preemptions_total if stats else None,
                       "finished_total": stats.num_requests_finished_total if stats else None},
            # the engine's own cost of feeding this page: the last snapshot, and everything it did for the
            # page as a share of its step time since the page opened
            "cost": {"snapshot_ms": round(snap.cost_s * 1e3, 4),
                     "share": snap.feed_s_total / snap.step_s_total if snap.step_s_total > 0 else None,
                     "feed_s": snap.feed_s_total, "step_s": snap.step_s_total},
        }

    def _throughput(self) -> dict[str, Any]:
        def rate(window: float) -> dict[str, float | None]:
            if len(self._counters) < 2:
                return {"prompt": None, "generation": None}
            t1, last = self._counters[-1]
            t0, first = next(((t, s) for t, s in self._counters if t >= t1 - window), self._counters[0])
            if t1 - t0 <= 0:
                return {"prompt": None, "generation": None}
            return {"prompt": (last.prompt_tokens_total - first.prompt_tokens_total) / (t1 - t0),
                    "generation": (last.generation_tokens_total - first.generation_tokens_total) / (t1 - t0)}

        return {"recent": rate(RECENT_S), "minute": rate(WINDOW_S), "recent_s": RECENT_S}

    def _cache(self, total: EngineStats | None) -> dict[str, Any]:
        if total is None:
            return {}
        first = self._counters[0][1] if self._counters else total
        queries = total.prefix_cache_queries_total - first.prefix_cache_queries_total
        hits = total.prefix_cache_hits_total - first.prefix_cache_hits_total
        return {"usage": total.kv_cache_usage,
                "hit_rate_minute": hits / queries if queries else None,
                "hit_rate_total": (total.prefix_cache_hits_total / total.prefix_cache_queries_total
                                   if total.prefix_cache_queries_total else None),
                "evictions_total": total.prefix_cache_evictions_total}

    def _parallel(self, now: float, stats: list[EngineStats | None]) -> list[dict[str, Any]]:
        out = []
        for i, (rep, s) in enumerate(zip(self._replicas, stats)):
            if s is None or s.parallel is None:
                continue
            history = rep.parallel
            if not history or history[-1][1] is not s.parallel:
                history.append((now, s.parallel))
            while len(history) > 1 and history[0][0] < now - _PARALLEL_WINDOW_S:
                history.popleft()
            p = s.parallel
            if len(history) > 1 and p.step_s > history[0][1].step_s:
                p = p.since(history[0][1])  # the last seconds, not the average since start
            out.append({"replica": i, "utilisation": p.utilisation, "comm_share": p.comm_share,
                        "bubble_rate": p.bubble_rate, "balance": p.balance,
                        "num_ranks": len(p.busy_s)})
        return out
