"""The schedulers by ``SchedulerConfig.batching`` name."""

from __future__ import annotations

from pagoda.config import SchedulerConfig
from pagoda.engine.args import BATCHING
from pagoda.engine.scheduler_interface import SchedulerInterface
from pagoda.kv_cache.kv_cache_manager import KVCacheManager


def make_scheduler(config: SchedulerConfig, kv_cache: KVCacheManager) -> SchedulerInterface:
    if config.batching == "continuous":
        from pagoda.engine.scheduler import Scheduler

        return Scheduler(config, kv_cache)
    if config.batching == "static":
        from pagoda.engine.static_batch_scheduler import StaticBatchScheduler

        return StaticBatchScheduler(config, kv_cache)
    raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {config.batching!r}")
