"""Data-parallel replicas as Ray actors on a two-node cluster (loopback addresses only): the same tokens
as one process, a replica killed mid-load (retry, 503 naming it, restart), health and metrics meanwhile,
and placements that cannot be met."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
from ray_nodes import HEAD_IP, WORKER_IP, is_loopback
from server.live_server import API_KEY, MODEL, LiveServer

from pagoda import LLM, SamplingParams
from pagoda.distributed.ray_cluster import RayConfig, RayUnavailableError
from pagoda.engine.args import EngineArgs
from pagoda.server.config import ServerConfig
from pagoda.server.data_parallel_client import DataParallelClient

pytestmark = pytest.mark.slow

PROMPTS = [[(7 * i + 3 * j) % 380 + 3 for j in range(12 + i)] for i in range(6)]


def _args(model_dir: str, **kw) -> EngineArgs:
    options = dict(model=model_dir, dtype="float32", num_kv_blocks=128, data_parallel_size=2, num_threads=1,
                   show_progress=False)
    options.update(kw)
    return EngineArgs(**options)


def _ray(cluster, **kw) -> RayConfig:
    return RayConfig(address=cluster.address, node_ip=HEAD_IP, **kw)


def _reference(model_dir: str, prompts: list[list[int]], max_tokens: int) -> list:
    """One process's greedy outputs: (token ids, text) per prompt."""
    llm = LLM(model_dir, dtype="float32", num_kv_blocks=128, show_progress=False)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [(r.outputs[0].token_ids, r.outputs[0].text) for r in llm.generate(prompts, params, use_tqdm=False)]


def test_dp2_replicas_on_two_nodes_match_one_process(ray_cluster, tiny_llama_dir):
    client = DataParallelClient(_args(tiny_llama_dir), policy="round_robin", ray=_ray(ray_cluster))
    client.start()
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)

    async def one(i: int) -> list[int]:
        tokens: list[int] = []
        async for delta in client.generate(f"r{i}", PROMPTS[i], params):
            tokens += delta.samples[0].token_ids
        return tokens

    async def all_at_once() -> list[list[int]]:
        return list(await asyncio.gather(*(one(i) for i in range(len(PROMPTS)))))

    try:
        placements = [r.placement for r in client.replicas]
        print("\n".join(client.placements()))
        assert sorted(p.node_ip for p in placements) == [HEAD_IP, WORKER_IP]  # one replica on each node
        assert all(is_loopback(p.node_ip) for p in placements)
        assert placements[0].node_id != placements[1].node_id and placements[0].pid != placements[1].pid
        outputs = asyncio.run(all_at_once())
        assert client.routed == [3, 3]
        # while both CPUs are taken, one more replica cannot be placed: a bounded wait, then the reason
        t0 = time.monotonic()
        with pytest.raises(RayUnavailableError, match=r"not placed within 2 s.*127\.0\.0\.2"):
            DataParallelClient(_args(tiny_llama_dir, data_parallel_size=1), ray=_ray(ray_cluster,
                                                                                     placement_timeout_s=2))
        assert time.monotonic() - t0 < 30
    finally:
        client.shutdown()
    assert outputs == [ids for ids, _ in _reference(tiny_llama_dir, PROMPTS, 8)]


def test_placements_the_cluster_cannot_hold_fail_at_once(ray_cluster, tiny_llama_dir):
    t0 = time.monotonic()
    with pytest.raises(RayUnavailableError, match=r"3 data-parallel replica.*CPU: 3.*the cluster has \{CPU: 2\}"):
        DataParallelClient(_args(tiny_llama_dir, data_parallel_size=3), ray=_ray(ray_cluster))
    with pytest.raises(RayUnavailableError, match=r"no node has \{CPU: 2\}"):  # 2 threads: 2 CPUs on one node
        DataParallelClient(_args(tiny_llama_dir, data_parallel_size=1, num_threads=2), ray=_ray(ray_cluster))
    assert time.monotonic() - t0 < 30


def _by_replica(metrics: dict[str, float], name: str) -> dict[str, float]:
    """``{replica}@{node}: value`` of one family out of the /metrics samples."""
    out = {}
    for key, value in metrics.items():
        m = re.fullmatch(re.escape(name) + r"\{(.*)\}", key)
        if m:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            out[f"{labels['replica']}@{labels['node']}"] = value
    return out


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_killed_replica_retries_unstarted_requests_and_restarts(ray_cluster, tiny_llama_dir):
    # one running request per replica: the second one sent to a replica waits, having streamed nothing
    client = DataParallelClient(_args(tiny_llama_dir, max_num_seqs=1), policy="round_robin",
                                ray=_ray(ray_cluster, max_replica_restarts=1))
    client.start()
    server = LiveServer(client, {"main": ServerConfig(served_model_name=MODEL, api_key=API_KEY)})
    prompts = PROMPTS[:4]
    max_tokens = 400  # long enough that the second request on each replica is still waiting at the kill
    api = server.async_openai(timeout=120)

    async def stream(i: int) -> tuple[str] | str:
        """(the text,) streamed, or the error's message."""
        text = ""
        try:
            chunks = await api.completions.create(model=MODEL, prompt=prompts[i], max_tokens=max_tokens,
                                                  temperature=0, stream=True, extra_body={"ignore_eos": True})
            async for chunk in chunks:
                text += "".join(c.text for c in chunk.choices)
        except openai.APIError as e:
            return str(e)
        return (text,)

    async def load_and_kill() -> tuple[list, float, httpx.Response, dict]:
        tasks = [asyncio.ensure_future(stream(i)) for i in range(4)]
        victim = client.replicas[1]
        await asyncio.to_thread(_wait_for, lambda: victim.num_in_flight == 2 and victim.num_waiting == 1
                                and client.replicas[0].num_in_flight == 2, 60, "two requests on each replica")
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)  # the replica's actor process crashes
        await asyncio.to_thread(_wait_for, lambda: victim.dead_reason is not None, 30, "the loss to be seen")
        # while Ray restarts it (the model loads again: seconds), the server is degraded but serving
        health = await asyncio.to_thread(httpx.get, server.url + "/health", timeout=10)
        metrics = await asyncio.to_thread(server.metrics)
        return await asyncio.gather(*tasks), killed_at, health, metrics

    try:
        results, killed_at, health, metrics = asyncio.run(load_and_kill())
        assert health.status_code == 200 and health.json()["status"] == "degraded", health.text
        assert "replica 1" in health.json()["detail"]
        where = [f"{i}@{r.placement.node_ip}" for i, r in enumerate(client.replicas)]
        assert set(_by_replica(metrics, "pagoda:num_requests_running")) == {where[0]}  # only the replica up
        assert _by_replica(metrics, "pagoda:replica_up") == {where[0]: 1.0, where[1]: 0.0}
        failed = [r for r in results if isinstance(r, str)]
        assert len(failed) == 1, results  # the one that had streamed on the lost replica
        assert "replica 1" in failed[0] and client.replicas[1].placement.node_ip in failed[0]
        assert client.retried == 1  # the one waiting there was served by replica 0

        _wait_for(lambda: client.replicas[1].alive, 120, "replica 1 to come back")
        # served again: a request routed to replica 1 (round robin alternates)
        before = client.routed[1]
        sync = server.openai()
        while client.routed[1] == before:
            sync.completions.create(model=MODEL, prompt=prompts[0], max_tokens=2, temperature=0)
        served_s = time.monotonic() - killed_at
        assert client.replicas[1].restarts == 1 and client.replicas[1].back_at is not None
        print(f"replica 1 killed -> seen lost after {client.replicas[1].lost_at - killed_at:.2f} s, restarted "
              f"(model loaded) after {client.replicas[1].back_at - killed_at:.1f} s, served a request again after "
              f"{served_s:.1f} s")
        reference = _reference(tiny_llama_dir, prompts, max_tokens)
        served = [i for i, r in enumerate(results) if not isinstance(r, str)]
        assert len(served) == 3 and all(results[i] == (reference[i][1],) for i in served)
        assert httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"
        metrics = server.metrics()
        assert set(_by_replica(metrics, "pagoda:generation_tokens_total")) == set(where)
        assert _by_replica(metrics, "pagoda:replica_up") == {where[0]: 1.0, where[1]: 1.0}
        assert _by_replica(metrics, "pagoda:replica_restarts_total") == {where[0]: 0.0, where[1]: 1.0}
        assert sorted(r.placement.node_ip for r in client.replicas) == [HEAD_IP, WORKER_IP]  # back on its node
    finally:
        server.stop()
        client.shutdown()


def test_serve_without_ray_installed_says_what_is_missing(tiny_llama_dir):
    code = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
            "from pagoda.cli.main import main\n"
            "sys.exit(main(sys.argv[1:]))")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, "serve", "--model", tiny_llama_dir,
                           "--data-parallel-backend", "ray", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 30
    assert proc.returncode != 0
    assert "pip install 'pagoda[ray]'" in proc.stderr and "'ray' package" in proc.stderr
