"""One two-node Ray cluster for all Ray tests, on loopback only.

The network rule of these tests: Ray may talk to loopback addresses only. Each node is given its own
loopback address (127.0.0.2 and 127.0.0.3: Ray keeps them, where it would rewrite 127.0.0.1 to the
machine's external address), and the fixture checks what every node announces before any test runs.
The two nodes are two raylets with their own object stores: to Pagoda they are two hosts (their node ids
and addresses differ), so replicas and ranks on them talk over TCP, never shared memory.

Teardown stops every Ray process and removes the cluster's session folder (kept under its own short temp
dir rather than /tmp/ray) and any ~/.ray or /tmp/ray/ray_current_cluster that the session created.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest
from ray_nodes import HEAD_IP, WORKER_IP

_NODE_OPTIONS = dict(num_cpus=1, object_store_memory=100 * 1024 * 1024, include_dashboard=False)


class TwoNodeCluster:
    def __init__(self, cluster, temp_dir: str) -> None:
        self.cluster = cluster
        self.temp_dir = temp_dir
        self.address = cluster.address


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[TwoNodeCluster]:
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray would report usage to its makers
    import ray
    from ray._private.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    home_ray = os.path.expanduser("~/.ray")
    current = get_ray_address_file(None)  # Ray notes the cluster's address here (under $TMPDIR)
    had_home, had_current = os.path.exists(home_ray), os.path.exists(current)
    os.makedirs(os.path.dirname(current), exist_ok=True)
    # short: Ray's unix sockets live under it (a socket path has at most 107 bytes)
    temp_dir = tempfile.mkdtemp(prefix="pgray-", dir="/tmp")
    cluster = Cluster()
    try:
        cluster.add_node(node_ip_address=HEAD_IP, temp_dir=temp_dir, **_NODE_OPTIONS)
        cluster.add_node(node_ip_address=WORKER_IP, **_NODE_OPTIONS)
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, _node_ip_address=HEAD_IP, namespace="pagoda",
                 logging_level="warning")
        nodes = [n for n in ray.nodes() if n["Alive"]]
        addresses = sorted(n["NodeManagerAddress"] for n in nodes)
        assert addresses == [HEAD_IP, WORKER_IP], addresses  # the network rule, checked before any test
        assert cluster.address.split(":")[0] == HEAD_IP
        yield TwoNodeCluster(cluster, temp_dir)
    finally:
        ray.shutdown()
        cluster.shutdown()
        deadline = time.monotonic() + 10
        while os.path.exists(temp_dir) and time.monotonic() < deadline:
            shutil.rmtree(temp_dir, ignore_errors=True)  # processes still exiting may write to it
            time.sleep(0.2)
        if not had_home:
            shutil.rmtree(home_ray, ignore_errors=True)
        if not had_current and os.path.exists(current):
            os.unlink(current)
