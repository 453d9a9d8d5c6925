"""`pagoda bench quality` on a tiny model: float32 agrees with itself, quantized settings print their
perplexity and agreement; the brief's English prose is what it scores by default."""

from __future__ import annotations

import argparse
import re

from pagoda.bench import quality


def test_english_prose_drops_chinese_and_code():
    text = "Paged attention stores keys in blocks of tokens.\n\n分页注意力把键值存进块里，按块分配显存。\n\n" \
           "```python\nprint('code')\n```\n\nContinuous batching admits new requests at every step."
    prose = quality.english_prose(text)
    assert "Paged attention" in prose and "Continuous batching" in prose
    assert "分页" not in prose and "print" not in prose


def test_bench_quality_table(tiny_model_factory, tmp_path, capsys):
    text = tmp_path / "held.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. Paged attention stores keys and values. " * 12)
    parser = argparse.ArgumentParser()
    quality.add_arguments(parser)
    args = parser.parse_args(["--model", tiny_model_factory(), "--text", str(text), "--settings", "bf16", "w8a8",
                              "--max-tokens", "200", "--window", "64", "--num-threads", "1"])
    assert quality.run(args) == 0
    out = capsys.readouterr().out
    rows = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in
            re.finditer(r"^(\S+)\s+([\d.]+)\s+[+-][\d.]+%\s+\S+\s+([\d.]+)%$", out, re.M)}
    assert set(rows) == {"float32", "bf16", "w8a8"}
    assert rows["float32"][1] == 100.0  # the reference agrees with itself
    assert all(1 < ppl < 1000 for ppl, _ in rows.values()), out
    assert rows["w8a8"][1] > 80  # a tiny random model: most top-1 tokens survive int8
