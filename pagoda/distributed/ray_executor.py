"""Tensor / pipeline parallel ranks placed by Ray: ``--distributed-executor-backend ray``.

A placement group holds one bundle per rank (``num_threads`` CPUs each, packed onto as few nodes as fit);
bundle 0 is pinned to the driver's node, where rank 0 runs inside the engine's process as with the mp
executor. Ranks are numbered node by node, the driver's node first, which makes the layout the multi-host
one of ``MultiprocExecutor`` with one "host" per Ray node: the ranks of other nodes are ``RankActor``\\ s
that fetch their spec from the driver's rendezvous store, and the driver's node's other ranks are its
local processes. Between nodes, collectives and stage links go over gloo (TCP); shared memory only joins
ranks of one Ray node. Nodes are told apart by Ray's node id, never by hostname: two Ray nodes on one
machine (two loopback addresses) still talk over TCP.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import tempfile
from dataclasses import replace
from datetime import timedelta
from typing import Any

import torch.distributed as dist

from pagoda.config import CacheConfig, ModelConfig
from pagoda.distributed.executor import MultiprocExecutor
from pagoda.distributed.parallel_config import ParallelConfig
from pagoda.distributed.ray_cluster import (
    Placement,
    RayConfig,
    RayUnavailableError,
    connect_ray,
    import_ray,
    node_addresses,
    place_bundles,
)
from pagoda.distributed.shm_comm import PeerLost
from pagoda.distributed.worker import SPEC_KEY, WorkerSpec, create_node_segments, node_shm_name, worker_main
from pagoda.lora.config import LoRAConfig
from pagoda.sample.sampler import Sampler

logger = logging.getLogger(__name__)

_DRIVER_NODE_SHARE = 0.001  # of the driver node's own resource: pins bundle 0 there


class RankActor:
    """One worker rank of another node than the driver's. Contract: ``run`` returns when the driver shuts
    the ranks down, raises with the rank's traceback if it fails; the first rank of a node creates the
    node's shared-memory segments (removed when it returns) and the node's other ranks wait for them."""

    def where(self) -> Placement:
        ray = import_ray()
        return Placement(ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), os.getpid())

    def run(self, rank: int, node: int, first_of_node: bool, master_addr: str, master_port: int,
            timeout_s: float) -> int:
        store = dist.TCPStore(master_addr, master_port + 1, is_master=False, timeout=timedelta(seconds=timeout_s))
        template: WorkerSpec = pickle.loads(store.get(SPEC_KEY))
        name = node_shm_name(master_port, node)
        ready_key = f"pagoda/node{node}/segments"
        segments: list[str] = []
        if first_of_node:
            segments = create_node_segments(name, template.parallel, template.model_config, node)
            store.set(ready_key, "1")
        else:
            store.wait([ready_key])
        fd, error_path = tempfile.mkstemp(prefix=f"pagoda-rank{rank}-", suffix=".err")
        os.close(fd)
        try:
            worker_main(replace(template, rank=rank, shm_name=name, error_path=error_path))
        finally:
            for path in segments:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            os.unlink(error_path)
        return 0


class RayExecutor(MultiprocExecutor):
    """``MultiprocExecutor`` whose layout Ray places; ``shutdown()`` also ends the rank actors and frees
    their placement group."""

    def __init__(self, parallel: ParallelConfig, model_path: str, model_config: ModelConfig,
                 cache_config: CacheConfig, sampler: Sampler, quantization: str | None,
                 lora: LoRAConfig | None = None, ray_address: str | None = None) -> None:
        if parallel.nnodes > 1:
            raise ValueError("nnodes: with distributed_executor_backend 'ray', Ray places the ranks on its nodes "
                             "(leave nnodes at 1)")
        parallel.validate(model_config)  # before any bundle is asked for
        ray = import_ray()
        from ray.util.placement_group import placement_group_table, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._started_ray = connect_ray(RayConfig(address=ray_address))
        self._pg: Any = None
        self._rank_actors: list[Any] = []
        self._rank_refs: dict[Any, int] = {}  # the actors' run() -> rank
        try:
            world, threads = parallel.world_size, parallel.num_threads
            driver_node = ray.get_runtime_context().get_node_id()
            driver_ip = node_addresses()[driver_node]
            bundles = [{"CPU": float(threads), f"node:{driver_ip}": _DRIVER_NODE_SHARE}]
            bundles += [{"CPU": float(threads)} for _ in range(world - 1)]
            self._pg = place_bundles(bundles, "PACK", f"{world} tensor/pipeline parallel rank(s)",
                                     min(parallel.startup_timeout_s, RayConfig.placement_timeout_s))
            on_node = placement_group_table(self._pg)["bundles_to_node_id"]
            nodes = [driver_node] + sorted({n for n in on_node.values()} - {driver_node})
            by_node = [[b for b in sorted(on_node) if on_node[b] == n] for n in nodes]
            if len({len(bs) for bs in by_node}) != 1:
                raise RayUnavailableError(f"Ray placed the {world} ranks unevenly over its nodes "
                                          f"({[len(bs) for bs in by_node]} per node); each node must hold as many")
            rank_bundle = [b for bs in by_node for b in bs]  # rank r lives in bundle rank_bundle[r]
            per_node = world // len(nodes)
            parallel = replace(parallel, nnodes=len(nodes), node_rank=0, master_addr=driver_ip,
                               master_port=_free_port_pair(driver_ip))
            addresses = node_addresses()
            self.rank_placements = [f"rank {r}: node {addresses[on_node[rank_bundle[r]]]}"
                                    + (" (the driver, this process)" if r == 0 else "") for r in range(world)]
            # two threads: where() answers while run() serves
            rank_actor = ray.remote(max_restarts=0, max_task_retries=0, max_concurrency=2)(RankActor)
            assert parallel.master_port is not None
            for r in range(per_node, world):  # the other nodes' ranks (the driver's node: local processes)
                actor = rank_actor.options(num_cpus=threads, scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._pg, placement_group_bundle_index=rank_bundle[r])).remote()
                self._rank_actors.append(actor)
                ref = actor.run.remote(r, r // per_node, r % per_node == 0, driver_ip, parallel.master_port,
                                       parallel.startup_timeout_s)
                self._rank_refs[ref] = r
            for line in self.rank_placements:
                logger.info("%s", line)
            super().__init__(parallel, model_path, model_config, cache_config, sampler, quantization, lora)
        except BaseException:
            self._release(ray, remove_placement_group)
            raise

    def _check_workers(self) -> None:
        super()._check_workers()
        ray = import_ray()
        done, _ = ray.wait(list(self._rank_refs), num_returns=1, timeout=0)
        if done:
            rank = self._rank_refs[done[0]]
            try:
                ray.get(done[0])
                detail = "exited"
            except Exception as e:  # noqa: BLE001 - its traceback is the reason
                detail = f"failed: {e}"
            raise PeerLost(f"worker rank {rank} (a Ray actor) {detail}")

    @property
    def alive(self) -> bool:
        if not super().alive:
            return False
        done, _ = import_ray().wait(list(self._rank_refs), num_returns=1, timeout=0)
        return not done

    def shutdown(self) -> None:
        super().shutdown()  # tells every rank to stop
        ray = import_ray()
        from ray.util.placement_group import remove_placement_group

        if self._rank_refs and ray.is_initialized():
            ray.wait(list(self._rank_refs), num_returns=len(self._rank_refs), timeout=10)
        self._release(ray, remove_placement_group)

    def _release(self, ray: Any, remove_placement_group: Any) -> None:
        if ray.is_initialized():
            for actor in self._rank_actors:
                ray.kill(actor)
            if self._pg is not None:
                remove_placement_group(self._pg)
        self._rank_actors, self._rank_refs, self._pg = [], {}, None
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def _free_port_pair(host: str) -> int:
    """A port p with p + 1 also free on ``host`` (gloo's rendezvous on p, the spec store on p + 1)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind((host, 0))
            port = a.getsockname()[1]
            try:
                b.bind((host, port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free pair of ports on {host}")
