"""`pagoda bench spec` end to end on a tiny model: every grounded prompt gets its own row, random
batches theirs, and the plot is written."""

from __future__ import annotations

import argparse
import json

from pagoda.bench import spec_bench
from pagoda.cli.bench import BENCH_COMMANDS


def test_bench_spec_runs(tiny_llama_dir, tmp_path, capsys):
    assert BENCH_COMMANDS["spec"] == "pagoda.bench.spec_bench"
    parser = argparse.ArgumentParser()
    spec_bench.add_arguments(parser)
    args = parser.parse_args(["--model", tiny_llama_dir, "--batch-sizes", "1", "2", "--output-len", "8",
                              "--prompt-len", "16", "--rounds", "1", "--plot", str(tmp_path / "spec.png"),
                              "--json", str(tmp_path / "spec.json")])
    assert spec_bench.run(args) == 0
    out = capsys.readouterr().out
    prompts = spec_bench.grounded_prompts()
    assert len(prompts) >= 10 and all(p["content"] for p in prompts)
    for p in prompts:
        assert f"| grounded | {p['name']} | 1 |" in out
    assert "| random | B=2 | 2 |" in out and "grounded, all prompts at B=1" in out
    assert (tmp_path / "spec.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "spec.json").read_text())) == len(prompts) + 2
