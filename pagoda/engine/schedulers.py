"""The schedulers by ``SchedulerConfig.batching`` name."""

from __future__ import annotations

from pagoda.config import SchedulerConfig
from pagoda.engine.args import BATCHING
from pagoda.engine.scheduler_interface import SchedulerInterface
from pagoda.kv_cache.kv_cache_manager import KVCacheManager
from pagoda.spec.speculator import Speculator


def make_scheduler(config: SchedulerConfig, kv_cache: KVCacheManager,
                   speculator: Speculator | None = None) -> SchedulerInterface:
    if config.batching == "continuous":
        from pagoda.engine.scheduler import Scheduler

        return Scheduler(config, kv_cache, speculator)
    if speculator is not None:
        raise ValueError(f"speculative_config works with continuous batching, not batching={config.batching!r}")
    if config.batching == "static":
        from pagoda.engine.static_batch_scheduler import StaticBatchScheduler

        return StaticBatchScheduler(config, kv_cache)
    raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {config.batching!r}")
