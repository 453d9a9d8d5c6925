"""What the engine process sends a live dashboard: plain picklable records (no torch, no callables)."""

from __future__ import annotations

from dataclasses import dataclass

from pagoda.engine.step_timeline import StepRecord
from pagoda.kv_cache.block_map import CompactBlockMap


@dataclass(frozen=True)
class QueueEntry:
    request_id: str
    status: str  # "running" | "waiting" | "preempted"
    num_prompt_tokens: int
    num_computed_tokens: int  # tokens with K/V in the cache (prompt and output)
    num_output_tokens: int
    max_tokens: int
    num_cached_tokens: int  # prompt tokens found in the prefix cache


@dataclass(frozen=True)
class DashboardSnapshot:
    taken_at: float  # time.monotonic() in the engine process (one clock per host)
    block_map: CompactBlockMap | None
    steps: list[StepRecord]  # those after the index the caller asked from
    queue: list[QueueEntry]  # at most QUEUE_LIMIT; the counts below are complete
    num_running: int
    num_waiting: int
    num_preempted: int  # waiting requests that had been running
    ttft_s: list[tuple[float, float]]  # (time, seconds) of first tokens after the time asked from
    itl_s: list[tuple[float, float]]  # (time, seconds) between a request's successive outputs
    # the engine's own cost of feeding the dashboard, measured around the work in the engine process
    cost_s: float  # building this snapshot
    feed_s_total: float  # snapshots + per-step records since the dashboard was opened
    step_s_total: float  # time inside engine.step() over the same period
