"""The Ray cluster that Pagoda's Ray backend places its actors on: joining it, or starting a local one.

Ray is an optional extra (``pip install 'pagoda[ray]'``): nothing imports it until a Ray backend is asked
for, and then ``import_ray`` names what is missing.

Addresses: a Ray node announces one address to the others. Asked for ``127.0.0.1`` (or ``localhost``),
Ray swaps in the machine's external address ("remotely reachable"); any other loopback address it keeps.
So a Ray started for one process announces ``LOCAL_NODE_IP`` (127.0.0.2: still loopback, never the
network), and a test cluster gives each node its own loopback address. Usage statistics (which Ray would
send to its makers) are off.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

LOCAL_NODE_IP = "127.0.0.2"  # a loopback address that Ray does not rewrite to the external one


@dataclass(frozen=True)
class Placement:
    """Where a replica (or rank) runs."""

    node_id: str  # Ray's node id (hex)
    node_ip: str  # the address that node announces
    pid: int

    def __str__(self) -> str:
        return f"node {self.node_ip} (id {self.node_id[:8]}), pid {self.pid}"


class RayUnavailableError(RuntimeError):
    """The Ray backend was asked for and cannot run: Ray is missing, or the placement cannot be met."""


@dataclass(frozen=True)
class RayConfig:
    """How the server reaches Ray, and how it treats the replicas it places there."""

    address: str | None = None  # an existing cluster ("host:port"); None: $RAY_ADDRESS, else a local Ray
    node_ip: str | None = None  # the address this process announces (a local Ray: LOCAL_NODE_IP)
    max_replica_restarts: int = 3  # Ray restarts a dead replica actor this many times, then it stays dead
    placement_timeout_s: float = 20.0  # waiting for the cluster to free the resources a placement needs
    restart_timeout_s: float = 300.0  # waiting for a restarted replica to load its model again
    local_object_store_mb: int = 200  # the object store of a local Ray (only small messages travel)

    def __post_init__(self) -> None:
        if self.max_replica_restarts < 0:
            raise ValueError(f"max_replica_restarts must be >= 0, got {self.max_replica_restarts}")
        for name in ("placement_timeout_s", "restart_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def import_ray() -> Any:
    """The ``ray`` module, or RayUnavailableError saying how to install it."""
    missing = ("the Ray backend needs the 'ray' package, which is not installed: pip install 'pagoda[ray]'")
    try:
        import ray
    except ImportError as e:
        raise RayUnavailableError(missing) from e
    if getattr(ray, "__file__", None) is None:  # a folder named ray on the path (a namespace package), not Ray
        raise RayUnavailableError(missing)
    return ray


def connect_ray(config: RayConfig) -> bool:
    """Joins the cluster at ``config.address`` (else $RAY_ADDRESS), else starts a local Ray for this
    process; a Ray this process already joined is kept. Returns whether a local Ray was started
    (``shutdown_ray`` stops it)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never report usage to Ray's makers
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address, _node_ip_address=config.node_ip, include_dashboard=False,
                 namespace="pagoda", logging_level=logging.WARNING)
        return False
    node_ip = config.node_ip or LOCAL_NODE_IP
    logger.info("starting a local Ray on %s", node_ip)
    # address="local": never join some other cluster found on this machine
    ray.init(address="local", _node_ip_address=node_ip, include_dashboard=False, namespace="pagoda",
             object_store_memory=config.local_object_store_mb * 1024 * 1024, logging_level=logging.WARNING)
    return True


def shutdown_ray(started_local: bool) -> None:
    if started_local:
        import_ray().shutdown()


def node_addresses() -> dict[str, str]:
    """Node id (hex) -> the address the node announces, for the live nodes of the cluster."""
    ray = import_ray()
    return {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}


_BOOKKEEPING = ("node:", "memory", "object_store_memory", "accelerator_type")  # not asked for by bundles


def _describe_cluster(ray: Any) -> str:
    nodes = [n for n in ray.nodes() if n["Alive"]]
    parts = []
    for n in nodes:
        res = {k: v for k, v in n["Resources"].items() if not k.startswith(_BOOKKEEPING)}
        parts.append(f"{n['NodeManagerAddress']} {_fmt(res)}")
    return f"{len(nodes)} node(s): " + "; ".join(parts)


def _fmt(resources: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"


def place_bundles(bundles: list[dict[str, float]], strategy: str, what: str, timeout_s: float) -> Any:
    """A placement group of ``bundles`` (one per replica or rank), ready; RayUnavailableError naming what is
    missing when no node (or the cluster) has enough of a resource, or when it is not placed in time."""
    ray = import_ray()
    from ray.util.placement_group import placement_group, remove_placement_group

    total = ray.cluster_resources()
    need: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            need[k] = need.get(k, 0.0) + v
    short = {k: v for k, v in need.items() if total.get(k, 0.0) < v}
    if short:
        raise RayUnavailableError(
            f"cannot place {what}: it needs {_fmt(need)} in all ({len(bundles)} x {_fmt(bundles[0])}); the cluster "
            f"has {_fmt({k: total.get(k, 0.0) for k in short})} ({_describe_cluster(ray)})")
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    for b in bundles:  # each bundle lands on one node
        if not any(all(r.get(k, 0.0) >= v for k, v in b.items()) for r in nodes):
            raise RayUnavailableError(f"cannot place {what}: no node has {_fmt(b)} for one of its parts "
                                      f"({_describe_cluster(ray)})")
    pg = placement_group(bundles, strategy=strategy)
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise RayUnavailableError(
            f"cannot place {what}: {len(bundles)} x {_fmt(bundles[0])} ({strategy}) not placed within "
            f"{timeout_s:g} s; {_describe_cluster(ray)}") from None
    return pg
