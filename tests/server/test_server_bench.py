"""`pagoda bench serve`: workloads, arrival process, metrics maths, and a run against the live server."""

from __future__ import annotations

import argparse
import json
import math
import statistics

import pytest
from live_server import API_KEY

from pagoda.bench import workloads
from pagoda.bench.load_generator import arrival_times
from pagoda.bench.metrics import compute_metrics, parse_slos
from pagoda.bench.openai_request import RequestResult
from pagoda.cli import bench as bench_cli


def test_workloads_are_seeded_and_shaped():
    a = workloads.sharegpt_like_workload(300, max_input_len=1024, max_output_len=512, seed=1)
    assert a == workloads.sharegpt_like_workload(300, max_input_len=1024, max_output_len=512, seed=1)
    assert a != workloads.sharegpt_like_workload(300, seed=2)
    ins, outs = [r.prompt_len for r in a], [r.output_len for r in a]
    assert 4 <= min(ins) and max(ins) <= 1024 and 4 <= min(outs) and max(outs) <= 512
    assert 60 < statistics.median(ins) < 160 and statistics.mean(ins) > statistics.median(ins)  # long tail
    assert all(len(r.prompt.split()) == r.prompt_len for r in a)

    r = workloads.random_workload(100, input_len=50, output_len=20, range_ratio=0.2, seed=0)
    assert all(40 <= x.prompt_len <= 60 and 16 <= x.output_len <= 24 for x in r)

    s = workloads.shared_prefix_workload(num_groups=3, prompts_per_group=4, system_prompt_len=100,
                                         question_len=10, output_len=8, seed=0)
    assert len(s) == 12
    prefixes = {x.prompt.split("\nQuestion")[0] for x in s}
    assert len(prefixes) == 3 and all(len(p.split()) == 102 for p in prefixes)
    assert s[0].prompt.split("\n")[0] != s[1].prompt.split("\n")[0]  # groups interleave


def test_poisson_arrivals():
    t = arrival_times(4000, request_rate=8.0, seed=3)
    gaps = [b - a for a, b in zip(t, t[1:])]
    assert t[0] == 0.0 and t == sorted(t)
    assert statistics.mean(gaps) == pytest.approx(1 / 8.0, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(1 / 8.0, rel=0.1)  # exponential: sd == mean
    assert arrival_times(5, math.inf) == [0.0] * 5


def test_metrics_maths():
    def res(ttft, e2e, n, itl):
        return RequestResult(prompt_len=10, output_len=n, start=0.0, success=True, ttft=ttft, e2e=e2e, itl=itl)

    results = [res(0.1, 1.1, 11, [0.1] * 10), res(0.3, 2.3, 5, [0.5] * 4), res(0.2, 0.2, 1, []),
               RequestResult(prompt_len=10, output_len=0, start=0.0, error="HTTP 500")]
    m = compute_metrics(results, duration_s=2.0, slos=parse_slos(["ttft:250", "tpot:200"]))
    assert (m.completed, m.failed) == (3, 1)
    assert m.total_input_tokens == 30 and m.total_output_tokens == 17
    assert m.request_throughput == 1.5 and m.output_throughput == 8.5 and m.total_token_throughput == 23.5
    # TPOT = (E2E - TTFT) / (n - 1): 100 ms and 500 ms; the 1-token request has none
    assert m.tpot_ms.mean == pytest.approx(300.0) and m.tpot_ms.median == pytest.approx(300.0)
    assert m.ttft_ms.median == pytest.approx(200.0)
    assert m.itl_ms.mean == pytest.approx((10 * 100 + 4 * 500) / 14)
    assert m.e2el_ms.p99 == pytest.approx(1100 + 0.98 * 1200)
    assert m.goodput == pytest.approx(1.0)  # requests 1 and 3 meet ttft <= 250 ms and tpot <= 200 ms
    with pytest.raises(ValueError):
        parse_slos(["latency:3"])


def _bench_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_bench_serve_against_live_server(server, tmp_path, capsys):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    args = _bench_args(["serve", "--url", server.url, "--api-key", API_KEY, "--workload", "random",
                        "--num-prompts", "12", "--input-len", "16", "--output-len", "6", "--max-concurrency", "4",
                        "--goodput", "ttft:60000", "--result-json", str(out_json), "--plot", str(out_png)])
    assert bench_cli.run(args) == 0
    table = capsys.readouterr().out
    assert "Successful requests" in table and "P99 TPOT (ms)" in table
    record = json.loads(out_json.read_text())
    m = record["metrics"]
    assert m["completed"] == 12 and m["failed"] == 0
    assert m["total_output_tokens"] == 12 * 6  # ignore_eos: exactly max_tokens each, counted by usage
    assert m["goodput"] == pytest.approx(m["request_throughput"])
    assert record["model"] == "tiny" and len(record["requests"]) == 12
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # chat endpoint, shared-prefix workload, Poisson arrivals
    args = _bench_args(["serve", "--url", server.url + "/v1", "--api-key", API_KEY, "--endpoint", "chat",
                        "--workload", "shared-prefix", "--num-prompts", "6", "--num-groups", "2",
                        "--system-prompt-len", "40", "--question-len", "5", "--output-len", "4",
                        "--request-rate", "50", "--result-json", str(out_json)])
    assert bench_cli.run(args) == 0
    assert json.loads(out_json.read_text())["metrics"]["total_output_tokens"] == 6 * 4


def test_bench_reports_failures(server, tmp_path):
    args = _bench_args(["serve", "--url", server.url, "--api-key", "wrong", "--model", "tiny",
                        "--num-prompts", "2", "--num-warmups", "0", "--result-json", str(tmp_path / "b.json")])
    assert bench_cli.run(args) == 2
    record = json.loads((tmp_path / "b.json").read_text())
    assert record["metrics"]["failed"] == 2 and "HTTP 401" in record["requests"][0]["error"]
