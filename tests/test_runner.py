"""The ``Runner`` contract, on the one-process ``ModelRunner``: submit / complete equal execute,
one virtual engine, no per-rank stats, and shutdown frees the KV cache."""

from __future__ import annotations

import pytest

from pagoda import LLM, SamplingParams
from pagoda.engine.model_runner import ModelRunner
from pagoda.engine.runner import Runner


def test_model_runner_is_a_runner(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=64, show_progress=False)
    engine, runner = llm.engine, llm.engine.runner
    assert isinstance(runner, ModelRunner) and isinstance(runner, Runner)
    assert runner.num_virtual_engines == 1 and runner.alive and runner.stats() is None
    engine.add_request("a", [5, 6, 7, 8], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    scheduled = engine.scheduler.schedule()
    # the same step twice: through submit / complete and through execute (the KV writes repeat)
    split = runner.complete(runner.submit(scheduled))
    whole = runner.execute(scheduled)
    assert split.sampled == whole.sampled and list(split.sampled) == ["a"]
    engine.scheduler.update(scheduled, whole.sampled)
    llm.shutdown()
    assert runner.kv_caches == []
    with pytest.raises(RuntimeError, match="shut down"):
        runner.submit(scheduled)
    with pytest.raises(RuntimeError, match="shut down"):
        llm.generate("Hello", use_tqdm=False)
