"""The ranks' parallel stats on the server's /metrics: TP and PP servers, rate-limited all-gathers,
data-parallel replicas labelled, nothing for one process."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

import pagoda.engine.llm_engine as llm_engine
from pagoda.distributed.parallel_stats import ParallelStats
from pagoda.engine.stats import EngineStats
from pagoda.server.config import ServerConfig
from pagoda.server.data_parallel_client import merge_stats
from pagoda.server.metrics import ServerMetrics

sys.path.insert(0, str(Path(__file__).parents[1] / "server"))  # the server tests' live server
from live_server import API_KEY, MODEL, LiveServer, tiny_engine_args  # noqa: E402

from pagoda.server.engine_process_client import EngineProcessClient  # noqa: E402

FAMILIES = ("pagoda:parallel_rank_busy_seconds_total", "pagoda:parallel_rank_utilisation",
            "pagoda:parallel_utilisation_balance", "pagoda:parallel_comm_time_share",
            "pagoda:pipeline_bubble_rate")


def _samples(metrics: dict[str, float], name: str) -> dict[str, float]:
    """``name``'s samples as {labels: value}."""
    pattern = re.compile(re.escape(name) + r"\{(.*)\}$")
    return {m.group(1): v for k, v in metrics.items() if (m := pattern.match(k))}


def _busy_by_rank(metrics: dict[str, float]) -> dict[str, float]:
    return {re.search(r'rank="(\d+)"', k).group(1): v
            for k, v in _samples(metrics, "pagoda:parallel_rank_busy_seconds_total").items()}


@pytest.mark.parametrize("layout", [{"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}],
                         ids=["tp2", "pp2"])
def test_server_exports_parallel_metrics(tiny_llama_dir, layout):
    client = EngineProcessClient(tiny_engine_args(tiny_llama_dir, num_kv_blocks=64, **layout))
    client.start()
    server = LiveServer(client, {"main": ServerConfig(served_model_name=MODEL, api_key=API_KEY)})
    api = server.openai()

    def complete(n: int) -> None:
        for i in range(n):
            api.completions.create(model=MODEL, prompt=f"count {i}:", max_tokens=4, temperature=0,
                                   extra_body={"ignore_eos": True})
        time.sleep(llm_engine.PARALLEL_STATS_INTERVAL_S)  # so that the scrape's stats are taken afresh

    try:
        complete(2)
        first = server.metrics()
        complete(2)
        second = server.metrics()
    finally:
        server.stop()
        client.shutdown()

    for name in FAMILIES:
        samples = _samples(first, name)
        assert samples and all(f'model_name="{MODEL}"' in labels for labels in samples), name
    busy = _busy_by_rank(first)
    assert sorted(busy) == ["0", "1"] and all(v > 0 for v in busy.values())
    utilisation = _samples(first, "pagoda:parallel_rank_utilisation")
    assert len(utilisation) == 2 and all(0 < u <= 1 for u in utilisation.values())
    (balance,) = _samples(first, "pagoda:parallel_utilisation_balance").values()
    assert 0 < balance <= 1
    (comm,) = _samples(first, "pagoda:parallel_comm_time_share").values()
    assert 0 <= comm < 1
    if "tensor_parallel_size" in layout:
        assert comm > 0  # every layer all-reduces
    (bubble,) = _samples(first, "pagoda:pipeline_bubble_rate").values()
    assert 0 <= bubble < 1
    later = _busy_by_rank(second)
    assert all(later[r] > busy[r] for r in busy), (busy, later)  # the counters move with the traffic


class _CountingRunner:
    """Stands in for a MultiprocExecutor: counts its (all-gathering) ``stats()`` calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.alive = True

    def stats(self) -> ParallelStats:
        self.calls += 1
        return ParallelStats([float(self.calls)] * 2, [0.0, 0.0], [0.0, 0.0], 2.0 * self.calls)

    def shutdown(self) -> None:
        pass


def test_get_stats_rate_limits_the_all_gather(tiny_llama_dir, make_llm, monkeypatch):
    engine = make_llm(tiny_llama_dir).engine
    assert engine.get_stats().parallel is None  # one process: nothing to gather
    now = [100.0]
    monkeypatch.setattr(llm_engine, "time", SimpleNamespace(monotonic=lambda: now[0]))
    runner = engine.runner = _CountingRunner()
    first = engine.get_stats().parallel
    for _ in range(20):  # the server's loop asks after every step
        assert engine.get_stats().parallel is first
    assert runner.calls == 1
    now[0] += llm_engine.PARALLEL_STATS_INTERVAL_S * 0.9
    assert engine.get_stats().parallel is first and runner.calls == 1
    now[0] += llm_engine.PARALLEL_STATS_INTERVAL_S * 0.2
    refreshed = engine.get_stats().parallel
    assert runner.calls == 2 and refreshed.busy_s == [2.0, 2.0]
    runner.alive = False  # a lost rank would never answer: keep the last stats
    now[0] += 10 * llm_engine.PARALLEL_STATS_INTERVAL_S
    assert engine.get_stats().parallel is refreshed and runner.calls == 2


def _engine_stats(parallel: ParallelStats | None, steps: int) -> EngineStats:
    return EngineStats(num_running=1, num_waiting=0, kv_cache_usage=0.5, num_kv_blocks=10, num_free_kv_blocks=5,
                       num_steps=steps, prompt_tokens_total=7, generation_tokens_total=3, num_preemptions_total=0,
                       num_requests_finished_total=1, parallel=parallel)


def test_data_parallel_replicas_are_labelled():
    replicas = [_engine_stats(ParallelStats([9.0, 8.0], [0.9, 0.6], [0.0, 2.0], 10.0), 4),
                _engine_stats(ParallelStats([4.0, 4.0], [0.5, 0.5], [0.0, 0.0], 5.0), 6)]
    merged = merge_stats(replicas)
    assert merged.num_steps == 10 and merged.parallel is None and merged.replicas == tuple(replicas)
    text = generate_latest(ServerMetrics("m", lambda: merged).registry).decode()
    for name in ("pagoda:parallel_rank_busy_seconds_total", "pagoda:parallel_utilisation_balance",
                 "pagoda:pipeline_bubble_rate"):
        assert text.count(f"# HELP {name} ") == 1, name  # one family, a sample per replica
    assert 'pagoda:parallel_rank_utilisation{model_name="m",rank="1",replica="0"} 0.6' in text
    assert 'pagoda:parallel_rank_utilisation{model_name="m",rank="1",replica="1"} 0.8' in text
    assert 'pagoda:pipeline_bubble_rate{model_name="m",replica="0"} 0.25' in text
    assert 'pagoda:parallel_utilisation_balance{model_name="m",replica="1"} 1.0' in text
    assert 'pagoda:engine_steps_total{model_name="m"} 10.0' in text


def test_one_process_exports_no_parallel_metrics():
    for stats in (_engine_stats(None, 3), merge_stats([_engine_stats(None, 3), _engine_stats(None, 4)])):
        text = generate_latest(ServerMetrics("m", lambda s=stats: s).registry).decode()
        assert "pagoda:engine_steps_total" in text
        assert "pagoda:parallel_" not in text and "pagoda:pipeline_bubble_rate" not in text
