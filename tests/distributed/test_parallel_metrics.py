"""Parallel stats maths and their Prometheus exposition; the bench's layout parser."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pagoda.bench.parallel import parse_layout
from pagoda.distributed.executor import ParallelStats
from pagoda.distributed.parallel_metrics import ParallelStatsCollector


def test_stats_maths():
    # two stages over 10 s of steps: stage 0 worked 9 s, stage 1 was busy 8 s of which 2 s waiting
    s = ParallelStats(busy_s=[9.0, 8.0], comm_s=[0.9, 0.6], wait_s=[0.0, 2.0], step_s=10.0)
    assert s.work_s == [9.0, 6.0]
    assert s.utilisation == [0.9, 0.6]
    assert s.balance == pytest.approx(6 / 9)
    assert s.comm_share == pytest.approx(1.5 / 15)
    assert s.bubble_rate == pytest.approx(1 - 15 / 20)
    later = ParallelStats([10.0, 9.0], [1.0, 0.7], [0.0, 2.5], 11.0).since(s)
    assert later.work_s == pytest.approx([1.0, 0.5]) and later.step_s == 1.0


def test_prometheus_exposition():
    registry = CollectorRegistry()
    stats = ParallelStats([9.0, 8.0], [0.9, 0.6], [0.0, 2.0], 10.0)
    registry.register(ParallelStatsCollector(lambda: stats, "m"))
    text = generate_latest(registry).decode()
    assert 'pagoda:pipeline_bubble_rate{model_name="m"} 0.25' in text
    assert 'pagoda:parallel_rank_utilisation{model_name="m",rank="1"} 0.6' in text
    assert "pagoda:parallel_comm_time_share" in text and "pagoda:parallel_utilisation_balance" in text


def test_parse_layout():
    assert [parse_layout(x) for x in ("1", "tp3", "pp2", "tp2pp2")] == [(1, 1), (3, 1), (1, 2), (2, 2)]
    with pytest.raises(ValueError):
        parse_layout("dp2")


def test_bench_parallel_runs_a_pipeline_and_reports_its_bubbles(tiny_llama_dir, tmp_path):
    import json

    from pagoda.cli.main import main

    out = tmp_path / "bench"
    assert main(["bench", "parallel", "--model", tiny_llama_dir, "--layouts", "1,pp2", "--batch-size", "4",
                 "--prompt-len", "8", "--output-len", "6", "--dtype", "float32", "--out", str(out)]) == 0  # same tokens
    single, pp2 = json.loads((out / "parallel.json").read_text())["results"]
    assert single["bubble_rate"] is None and pp2["ranks"] == 2
    assert 0 <= pp2["decode_bubble_rate"] < 1 and 0 <= pp2["bubble_rate"] < 1
    assert pp2["stage_layers"] == [1, 1] and pp2["suggested_stage_layers"] == [1, 1]  # 2 layers: no other split
    assert (out / "parallel_timeline.png").stat().st_size > 0
