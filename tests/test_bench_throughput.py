"""Smoke test of `pagoda bench throughput` on the tiny model: structure of the results, never timings."""

import argparse
import json
import os

from pagoda.bench import throughput


def test_bench_throughput_runs_every_part_on_a_tiny_model(tiny_llama_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    throughput.add_arguments(parser)
    args = parser.parse_args([
        "--model", tiny_llama_dir, "--dtype", "float32", "--batch-sizes", "1", "2",
        "--prompt-len", "8", "--output-len", "4", "--quantizations", "none", "--num-requests", "8",
        "--min-input-len", "4", "--max-input-len", "40", "--min-output-len", "2", "--max-output-len", "8",
        "--max-num-seqs", "4", "--no-progress", "--out", str(tmp_path)])
    report = throughput.benchmark(args)

    fixed = {(r.system, r.batch_size): r for r in report.fixed_shape}
    assert set(fixed) == {(s, b) for s in ("pagoda none", throughput.TRANSFORMERS) for b in (1, 2)}
    for r in fixed.values():
        assert r.generated_tokens == r.batch_size * 4 and r.seconds > 0

    # without --request-rate: a saturation run (all at t = 0) sets the Poisson rate of the other two
    assert [m.batching for m in report.mix] == ["continuous", "continuous", "static"]
    burst, cont, static = report.mix
    assert burst.request_rate == float("inf") and cont.request_rate == static.request_rate > 0
    for m in report.mix:
        assert len(m.requests) == 8  # every request finished
        assert all(r.arrival <= r.first_token <= r.finished for r in m.requests)
    # both runs served the same requests to their full lengths
    assert [(r.prompt_len, r.output_len) for r in cont.requests] == [(r.prompt_len, r.output_len)
                                                                       for r in static.requests]
    assert all(4 <= r.prompt_len <= 40 and 2 <= r.output_len <= 8 for r in cont.requests)
    kv = cont.kv
    assert kv.peak_running <= 4 and 0 < kv.peak_usage <= 1
    assert 0 < kv.utilisation(kv.contiguous_slot_steps) < kv.utilisation(kv.paged_slot_steps) <= 1

    paths = throughput.write_outputs(report, args.batch_sizes, str(tmp_path))
    assert sorted(os.path.basename(p) for p in paths) == ["latency_cdf.png", "throughput.json",
                                                          "throughput_vs_batch.png"]
    record = json.loads((tmp_path / "throughput.json").read_text())
    assert len(record["mix"][1]["requests"]) == 8 and len(record["fixed_shape"]) == 4
    assert record["mix"][0]["request_rate"] == "inf"
    out = capsys.readouterr().out
    assert "| B | pagoda none | transformers fp32 |" in out and "continuous batching's mean E2E" in out
