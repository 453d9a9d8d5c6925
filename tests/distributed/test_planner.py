"""`pagoda plan`: the brief's memory table and its LLaMA-70B choice, TP divisibility, local models."""

from __future__ import annotations

from pagoda.cli.main import main
from pagoda.distributed.planner import PRESETS, Cluster, memory_table, plan


def test_memory_table_matches_the_brief():
    assert [(n, [round(x) for x in v]) for n, v in memory_table()] == [
        ("LLaMA-7B", [14, 7]), ("LLaMA-70B", [140, 70]), ("GPT-3 175B", [350, 175])]


def test_llama70b_fp16_one_host_of_8x80():
    layouts = plan(PRESETS["llama-70b"], Cluster(hosts=1, devices_per_host=8, memory_gb=80))
    names = [layout.name for layout in layouts]
    assert names[0] == "TP 4 x DP 2"  # TP 2 fits the weights but leaves too little KV room
    assert names.index("TP 8") < names.index("TP 4 x PP 2")  # the brief's alternatives, ranked after
    tp2 = next(layout for layout in layouts if layout.name == "TP 2 x DP 4")
    assert not tp2.fits and "KV room" in tp2.rule
    assert layouts[0].weights_gb == 35.0


def test_pp_goes_across_hosts():
    layouts = plan(PRESETS["gpt3-175b"], Cluster(hosts=2, devices_per_host=4, memory_gb=80))
    assert layouts[0].name == "TP 4 x PP 2" and "across hosts" in layouts[0].rule
    tp8 = next(layout for layout in layouts if layout.name == "TP 8")
    assert layouts.index(tp8) > 0 and "crosses hosts" in tp8.rule


def test_tp_sizes_divide_heads():
    # the default model has 9 query / 3 KV heads: TP 2 and 4 are never offered
    shape = PRESETS["llama-7b"].__class__("m", 30, 576, 9, 3, 1536, 49152, True)
    assert {layout.tp for layout in plan(shape, Cluster(devices_per_host=12, memory_gb=1))} <= {1, 3}


def test_cli_on_a_local_model(tiny_llama_dir, capsys):
    assert main(["plan", "--model", tiny_llama_dir, "--devices-per-host", "2", "--memory-gb", "1"]) == 0
    out = capsys.readouterr().out
    assert "choice: DP 2" in out and "4 query / 2 KV heads" in out
    assert main(["plan", "--params", "70B", "--layers", "80", "--hidden", "8192", "--heads", "64",
                 "--kv-heads", "8"]) == 0
    assert "choice: TP 4 x DP 2" in capsys.readouterr().out
    assert main(["plan", "--memory-table"]) == 0
    assert "350 GB" in capsys.readouterr().out
