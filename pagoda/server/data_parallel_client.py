"""Data parallelism behind one server: N engine replicas and a router, as one ``EngineClient``.

Each replica is a full engine (itself possibly tensor / pipeline parallel); the router picks one per
request (``pagoda.distributed.router``). Two backends place the replicas:

- ``mp`` (default): engine processes of this host. The server is alive while every replica is: one
  that dies fails the health check, as a lone engine would.
- ``ray``: Ray actors on whichever nodes of a Ray cluster have the resources (one placement-group
  bundle per replica, spread over the nodes). Ray restarts a dead replica (``max_replica_restarts``);
  meanwhile the others serve and ``/health`` reports the server degraded. The server is down only
  while no replica is up.

With either, a request the lost replica had not started streaming is retried on another replica; one
that had streamed fails with a 503 naming the replica.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import fields, replace
from functools import reduce
from typing import Any

from pagoda.distributed.ray_cluster import RayConfig
from pagoda.distributed.router import make_router
from pagoda.engine.args import EngineArgs
from pagoda.engine.stats import EngineStats
from pagoda.lora.request import LoRARequest
from pagoda.sampling_params import SamplingParams
from pagoda.server.engine_client import EngineDeadError
from pagoda.server.engine_process import make_llm_engine
from pagoda.server.engine_process_client import EngineProcessClient
from pagoda.server.messages import EngineReady, RequestDelta
from pagoda.server.metrics import ReplicaState
from pagoda.spec.spec_counters import SpecCounters

logger = logging.getLogger(__name__)

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
    """An ``EngineClient`` over N replicas: each request goes to the one the router picks (among the
    replicas that are up)."""

    def __init__(self, engine_args: EngineArgs, make_engine: Callable[[EngineArgs], Any] = make_llm_engine,
                 policy: str | None = None, ray: RayConfig | None = None) -> None:
        n = engine_args.data_parallel_size
        ranks_per_replica = engine_args.tensor_parallel_size * engine_args.pipeline_parallel_size
        threads = engine_args.num_threads or max(1, (os.cpu_count() or 1) // (n * ranks_per_replica))
        replica_args = replace(engine_args, data_parallel_size=1, num_threads=threads)
        self.ray = ray
        self._started_ray = False
        self._placement_group: Any = None
        self.replicas: list[Any]
        if ray is None:
            self.replicas = [EngineProcessClient(replica_args, make_engine) for _ in range(n)]
        else:
            self.replicas = self._place_on_ray(replica_args, n, threads * ranks_per_replica, ray, make_engine)
        self.router = make_router(policy or engine_args.router_policy, n)
        self.routed = [0] * n  # requests sent to each replica
        self.retried = 0  # requests sent again after their replica was lost before they streamed
        self._owner: dict[str, int] = {}
        self.info: EngineReady | None = None

    def _place_on_ray(self, replica_args: EngineArgs, n: int, cpus: int, ray: RayConfig,
                      make_engine: Callable[[EngineArgs], Any]) -> list[Any]:
        from pagoda.distributed.ray_cluster import connect_ray, place_bundles, shutdown_ray
        from pagoda.distributed.ray_replica_client import RayReplicaClient

        self._started_ray = connect_ray(ray)
        try:
            pg = place_bundles([{"CPU": float(cpus)}] * n, "SPREAD", f"{n} data-parallel replica(s)",
                               ray.placement_timeout_s)
        except BaseException:
            shutdown_ray(self._started_ray)
            raise
        self._placement_group = pg
        return [RayReplicaClient(replica_args, i, pg, ray.max_replica_restarts, ray.restart_timeout_s, make_engine)
                for i in range(n)]

    # --- lifecycle ---
    def start(self, timeout_s: float = 600.0) -> EngineReady:
        try:
            if self.ray is None:
                infos = [r.start(timeout_s) for r in self.replicas]
            else:  # the actors load their models at the same time
                with ThreadPoolExecutor(len(self.replicas)) as pool:
                    infos = list(pool.map(lambda r: r.start(timeout_s), self.replicas))
        except BaseException:
            self.shutdown()
            raise
        for line in self.placements():
            logger.info("%s", line)
        self.info = infos[0]
        return self.info

    def placements(self) -> list[str]:
        """Where each replica runs, one line each."""
        if self.ray is None:
            return [f"replica {i}: this host, pid {r.pid}" for i, r in enumerate(self.replicas)]
        return [f"replica {i}: {r.placement}" for i, r in enumerate(self.replicas)]

    def shutdown(self, timeout_s: float = 10.0) -> None:
        for r in self.replicas:
            r.shutdown(timeout_s)
        if self.ray is not None:
            from ray.util.placement_group import remove_placement_group

            from pagoda.distributed.ray_cluster import import_ray, shutdown_ray

            if self._placement_group is not None and import_ray().is_initialized():
                remove_placement_group(self._placement_group)
            self._placement_group = None
            shutdown_ray(self._started_ray)
            self._started_ray = False

    @property
    def alive(self) -> bool:
        if self.info is None:
            return False
        if self.ray is None:
            return all(r.alive for r in self.replicas)
        return any(r.alive for r in self.replicas)

    @property
    def dead_reason(self) -> str | None:
        reasons = [f"replica {i}: {r.dead_reason}" for i, r in enumerate(self.replicas) if r.dead_reason is not None]
        if not reasons or (self.ray is not None and self.alive):
            return None
        return "; ".join(reasons)

    @property
    def degraded_reason(self) -> str | None:
        """Serving, but with some replicas down (the Ray backend keeps serving on the others)."""
        if not self.alive:
            return None
        down = [r.dead_reason or "down" for r in self.replicas if not r.alive]
        return "; ".join(down) if down else None

    @property
    def pid(self) -> int | None:
        return self.replicas[0].pid

    @property
    def latest_stats(self) -> EngineStats | None:
        if self.ray is not None:
            known = [r.latest_stats for r in self.replicas if r.alive and r.latest_stats is not None]
            return merge_stats(known) if known else None
        parts = [r.latest_stats for r in self.replicas]
        known = [p for p in parts if p is not None]
        return merge_stats(known) if len(known) == len(parts) else None

    @property
    def labelled_stats(self) -> Callable[[], list[ReplicaState]] | None:
        """What ``/metrics`` labels per replica and node: on Ray, where replicas come and go."""
        return self.replica_states if self.ray is not None else None

    def replica_states(self) -> list[ReplicaState]:
        """Each Ray replica: where it runs, whether it is up, its restarts and latest stats (None while down)."""
        out = []
        for i, r in enumerate(self.replicas):
            node = r.placement.node_ip if r.placement is not None else ""
            up = r.alive
            out.append(ReplicaState(str(i), node, up, r.restarts, r.latest_stats if up else None))
        return out

    @property
    def num_waiting(self) -> int:
        return sum(r.num_waiting for r in self.replicas)

    @property
    def num_in_flight(self) -> int:
        return sum(r.num_in_flight for r in self.replicas)

    # --- requests ---
    def _choose(self, prompt_token_ids: list[int], exclude: set[int]) -> int:
        up = [i for i, r in enumerate(self.replicas) if r.alive and i not in exclude]
        if not up:
            raise EngineDeadError(self.dead_reason or "no replica is up")
        i = self.router.choose(prompt_token_ids, [r.num_in_flight for r in self.replicas])
        if i not in up:  # the router's pick is down: the least loaded one that is up
            i = min(up, key=lambda j: self.replicas[j].num_in_flight)
        return i

    async def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                       priority: int = 0, arrival_time: float | None = None,
                       cache_salt: str | None = None, lora_request: LoRARequest | None = None
                       ) -> AsyncGenerator[RequestDelta, None]:
        if not self.alive:
            raise EngineDeadError(self.dead_reason or "engine is not running")
        lost: set[int] = set()
        while True:
            i = self._choose(prompt_token_ids, lost)
            self.routed[i] += 1
            self._owner[request_id] = i
            streamed = False
            try:
                async with aclosing(self.replicas[i].generate(
                        request_id, prompt_token_ids, params, priority=priority, arrival_time=arrival_time,
                        cache_salt=cache_salt, lora_request=lora_request)) as it:
                    async for delta in it:
                        streamed = True
                        yield delta
                return
            except EngineDeadError as e:
                lost.add(i)
                others_up = any(r.alive for j, r in enumerate(self.replicas) if j not in lost)
                if streamed or not others_up:
                    raise EngineDeadError(f"replica {i} was lost while serving this request: {e}") from None
                self.retried += 1
                logger.warning("request %s: replica %d was lost before it streamed; retrying", request_id, i)
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
        if self.ray is None:
            return merge_stats([await r.get_stats(timeout_s) for r in self.replicas])
        parts = []
        for r in self.replicas:  # the replicas that are up
            if r.alive:
                try:
                    parts.append(await r.get_stats(timeout_s))
                except EngineDeadError:
                    pass
        if not parts:
            raise EngineDeadError(self.dead_reason or "no replica is up")
        return merge_stats(parts)
