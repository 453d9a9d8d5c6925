"""The dashboard under tensor and data parallelism: per-rank figures from the ranks' own accounting,
one block map per replica; the page draws both."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pagoda.engine.args import EngineArgs
from pagoda.sampling_params import SamplingParams
from pagoda.server.dashboard_hub import DashboardHub
from pagoda.server.data_parallel_client import DataParallelClient
from pagoda.server.engine_process_client import EngineProcessClient


async def _generate(client: Any, n: int) -> None:
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)

    async def one(i: int) -> None:
        async for _ in client.generate(f"r{i}", [5 + i, 6, 7, 8, 9, 10], params):
            pass

    await asyncio.gather(*(one(i) for i in range(n)))


def _frame(client: Any) -> tuple[dict, Any, Any]:
    """Opens a hub on the client, runs four requests, and returns the next frame. In its own thread:
    Playwright's sync API holds the test thread's event loop."""
    async def run() -> tuple[dict, Any, Any]:
        hub = DashboardHub(client, "tiny")
        await hub.take_frame()  # the dashboard opens
        first = client.latest_stats
        await _generate(client, 4)
        await asyncio.sleep(1.1)  # the ranks' stats are refreshed at most once a second
        await client.get_stats()
        frame, _ = await hub.take_frame()
        return json.loads(frame), first, client.latest_stats

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result(timeout=300)


@pytest.mark.slow
def test_tensor_parallel_ranks_and_data_parallel_replicas(tiny_llama_dir: str, server, page) -> None:
    # the page draws frames handed to it (the live server's own stream is cut, so they stay)
    page.route("**/dashboard/stream", lambda route: route.abort())
    page.goto(server.url + "/dashboard")
    tp = EngineProcessClient(EngineArgs(model=tiny_llama_dir, dtype="float32", num_kv_blocks=64, tensor_parallel_size=2,
                                 show_progress=False))
    tp.start()
    try:
        tp_frame, first, last = _frame(tp)
    finally:
        tp.shutdown()
    (par,) = tp_frame["parallel"]
    assert par["num_ranks"] == 2 and len(par["utilisation"]) == 2
    assert all(0 < u <= 1.0 + 1e-9 for u in par["utilisation"])
    assert 0 <= par["comm_share"] <= 1 and 0 <= par["bubble_rate"] <= 1
    # the last seconds' shares, from the ranks' own counters
    window = last.parallel.since(first.parallel) if first.parallel is not None else last.parallel
    assert par["utilisation"] == pytest.approx(window.utilisation)
    assert par["comm_share"] == pytest.approx(window.comm_share)
    assert par["bubble_rate"] == pytest.approx(window.bubble_rate)
    steps = tp_frame["replicas"][0]["steps"]
    assert sum(s[4] for s in steps) == 4 * 11  # each request's 11 tokens after its first came from decode rows

    dp = DataParallelClient(EngineArgs(model=tiny_llama_dir, dtype="float32", num_kv_blocks=32,
                                       data_parallel_size=2, show_progress=False), policy="round_robin")
    dp.start()
    try:
        dp_frame = _frame(dp)[0]
    finally:
        dp.shutdown()
    assert [r["replica"] for r in dp_frame["replicas"]] == [0, 1]
    assert all(r["blocks"]["num_blocks"] == 32 for r in dp_frame["replicas"])
    # round robin: each replica ran two of the four requests
    assert [sum(s[4] for s in r["steps"]) for r in dp_frame["replicas"]] == [2 * 11, 2 * 11]
    assert dp_frame["parallel"] == []

    # the page draws what these frames hold
    page.evaluate("f => render(f)", tp_frame)
    assert page.is_visible("#parallel-section")
    assert len(page.query_selector_all("#parallel .rank")) == 2
    assert "bubble rate" in page.text_content("#parallel")
    page.evaluate("f => render(f)", dp_frame)
    assert len(page.query_selector_all(".replica")) == 2
    assert not page.is_visible("#parallel-section")
