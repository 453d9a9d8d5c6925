"""Data parallelism behind one server: N engine processes and a router, as one ``EngineClient``.

Each replica is a full engine (itself possibly tensor / pipeline parallel) in its own process;
the router picks one per request (``pagoda.distributed.router``). The server is alive while
every replica is: one that dies fails the health check, as a lone engine would.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import fields, replace
from functools import reduce
from typing import Any

from pagoda.distributed.router import make_router
from pagoda.engine.args import EngineArgs
from pagoda.engine.stats import EngineStats
from pagoda.lora.request import LoRARequest
from pagoda.sampling_params import SamplingParams
from pagoda.server.engine_client import EngineDeadError
from pagoda.server.engine_process import make_llm_engine
from pagoda.server.engine_process_client import EngineProcessClient
from pagoda.server.messages import EngineReady, RequestDelta
from pagoda.spec.spec_counters import SpecCounters

_UNSUMMED = ("parallel", "replicas", "spec")  # per-rank seconds of different replicas do not add up


def merge_stats(parts: list[EngineStats]) -> EngineStats:
    """Counters and gauges summed over replicas; KV usage over all their blocks; each replica's own
    snapshot kept in ``replicas`` (its per-rank parallel stats are exported per replica)."""
    total = {f.name: sum(getattr(p, f.name) for p in parts)
             for f in fields(EngineStats) if f.name not in _UNSUMMED}
    blocks = total["num_kv_blocks"]
    total["kv_cache_usage"] = (sum(p.kv_cache_usage * p.num_kv_blocks for p in parts) / blocks) if blocks else 0.0
    specs = [p.spec for p in parts if p.spec is not None]
    total["spec"] = reduce(SpecCounters.add, specs) if specs else None  # speculation's counters add up
    return EngineStats(**total, replicas=tuple(parts))


class DataParallelClient:
    """An ``EngineClient`` over N replicas: each request goes to the one the router picks."""

    def __init__(self, engine_args: EngineArgs, make_engine: Callable[[EngineArgs], Any] = make_llm_engine,
                 policy: str | None = None) -> None:
        n = engine_args.data_parallel_size
        ranks = n * engine_args.tensor_parallel_size * engine_args.pipeline_parallel_size
        threads = engine_args.num_threads or max(1, (os.cpu_count() or 1) // ranks)
        replica_args = replace(engine_args, data_parallel_size=1, num_threads=threads)
        self.replicas = [EngineProcessClient(replica_args, make_engine) for _ in range(n)]
        self.router = make_router(policy or engine_args.router_policy, n)
        self.routed = [0] * n  # requests sent to each replica
        self._owner: dict[str, int] = {}
        self.info: EngineReady | None = None

    # --- lifecycle ---
    def start(self, timeout_s: float = 600.0) -> EngineReady:
        try:
            infos = [r.start(timeout_s) for r in self.replicas]
        except BaseException:
            self.shutdown()
            raise
        self.info = infos[0]
        return self.info

    def shutdown(self, timeout_s: float = 10.0) -> None:
        for r in self.replicas:
            r.shutdown(timeout_s)

    @property
    def alive(self) -> bool:
        return self.info is not None and all(r.alive for r in self.replicas)

    @property
    def dead_reason(self) -> str | None:
        for i, r in enumerate(self.replicas):
            if r.dead_reason is not None:
                return f"replica {i}: {r.dead_reason}"
        return None

    @property
    def pid(self) -> int | None:
        return self.replicas[0].pid

    @property
    def latest_stats(self) -> EngineStats | None:
        parts = [r.latest_stats for r in self.replicas]
        known = [p for p in parts if p is not None]
        return merge_stats(known) if len(known) == len(parts) else None

    @property
    def num_waiting(self) -> int:
        return sum(r.num_waiting for r in self.replicas)

    @property
    def num_in_flight(self) -> int:
        return sum(r.num_in_flight for r in self.replicas)

    # --- requests ---
    async def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                       priority: int = 0, arrival_time: float | None = None,
                       cache_salt: str | None = None, lora_request: LoRARequest | None = None
                       ) -> AsyncGenerator[RequestDelta, None]:
        if not self.alive:
            raise EngineDeadError(self.dead_reason or "engine is not running")
        i = self.router.choose(prompt_token_ids, [r.num_in_flight for r in self.replicas])
        self.routed[i] += 1
        self._owner[request_id] = i
        try:
            async with aclosing(self.replicas[i].generate(request_id, prompt_token_ids, params, priority=priority,
                                                          arrival_time=arrival_time, cache_salt=cache_salt,
                                                          lora_request=lora_request)) as it:
                async for delta in it:
                    yield delta
        finally:
            self._owner.pop(request_id, None)

    def unload_lora(self, lora_int_id: int) -> None:
        for replica in self.replicas:
            replica.unload_lora(lora_int_id)

    def abort(self, request_id: str) -> None:
        i = self._owner.get(request_id)
        if i is not None:
            self.replicas[i].abort(request_id)

    async def get_stats(self, timeout_s: float = 30.0) -> EngineStats:
        return merge_stats([await r.get_stats(timeout_s) for r in self.replicas])
