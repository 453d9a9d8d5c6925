"""A snapshot of the engine's counters and gauges, read by metrics and dashboards."""

from __future__ import annotations

from dataclasses import dataclass

from pagoda.distributed.parallel_stats import ParallelStats
from pagoda.spec.spec_counters import SpecCounters


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # fraction of KV blocks in use, 0..1
    num_kv_blocks: int
    num_free_kv_blocks: int
    num_steps: int
    prompt_tokens_total: int  # prompt tokens computed (recomputation after preemption included)
    generation_tokens_total: int
    num_preemptions_total: int
    num_requests_finished_total: int
    jump_forward_tokens_total: int = 0  # grammar-forced tokens appended without a model step
    prefix_cache_queries_total: int = 0  # tokens looked up in the prefix cache
    prefix_cache_hits_total: int = 0  # tokens found there
    prefix_cache_evictions_total: int = 0  # blocks
    spec: SpecCounters | None = None  # speculative decoding's counters (None: speculation off)
    # a tensor / pipeline parallel engine's per-rank seconds (None: one process); refreshed about once a
    # second, as taking them makes every rank meet in an all-gather
    parallel: ParallelStats | None = None
    # data parallelism: each replica's own snapshot (the fields above are their sums, parallel None)
    replicas: tuple[EngineStats, ...] = ()
