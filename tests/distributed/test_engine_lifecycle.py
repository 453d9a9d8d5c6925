"""Parallel engines one after another in one process: shutdown, the context manager and a dropped
engine all release the worker ranks, the process group, the KV cache and the temp folder."""

from __future__ import annotations

import gc
import tempfile

import pytest
import torch.distributed as dist
from leftovers import rank_folders
from test_tensor_parallel import GREEDY, PROMPTS, assert_same
from tiny_heads import build_six_head_model

from pagoda import LLM
from pagoda.distributed.executor import MultiprocExecutor
from pagoda.engine.runner import Runner

OPTIONS = {"dtype": "float32", "num_kv_blocks": 64, "show_progress": False}


def _released(workers: list) -> None:
    assert workers and all(p.poll() is not None for p in workers)
    assert not dist.is_initialized()
    assert rank_folders(tempfile.gettempdir()) == []


def test_tp3_then_pp2_then_a_dropped_engine(tmp_path):
    path = build_six_head_model(str(tmp_path / "six"))
    with LLM(path, **OPTIONS) as one:
        reference = one.generate(PROMPTS, GREEDY, use_tqdm=False)

    with LLM(path, tensor_parallel_size=3, **OPTIONS) as llm:
        executor = llm.engine.runner
        assert isinstance(executor, Runner) and isinstance(executor, MultiprocExecutor)
        assert_same(reference, llm.generate(PROMPTS, GREEDY, use_tqdm=False))
        assert executor.runner.kv_caches
    _released(executor._procs)
    assert executor.runner.kv_caches == []  # the KV cache went with it
    with pytest.raises(RuntimeError, match="shut down"):
        llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)

    llm = LLM(path, pipeline_parallel_size=2, **OPTIONS)
    assert_same(reference, llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    workers = llm.engine.runner._procs
    del llm, executor  # no shutdown: the finalizer releases the engine when it goes
    gc.collect()
    _released(workers)

    llm = LLM(path, tensor_parallel_size=3, **OPTIONS)
    try:
        assert_same(reference, llm.generate(PROMPTS, GREEDY, use_tqdm=False))
        with pytest.raises(RuntimeError, match="still holds the torch.distributed process group"):
            LLM(path, pipeline_parallel_size=2, **OPTIONS)  # one parallel engine at a time
    finally:
        llm.shutdown()
        llm.shutdown()  # idempotent
    _released(llm.engine.runner._procs)
