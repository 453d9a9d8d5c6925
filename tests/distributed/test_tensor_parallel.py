"""Tensor parallelism: greedy tokens and logprobs equal to one process; shards; clear refusals."""

from __future__ import annotations

import os
import signal

import pytest
from tiny_heads import build_six_head_model

from pagoda import SamplingParams
from pagoda.distributed.shm_comm import PeerLost

PROMPTS = ["The quick brown fox", "Hello world! How are", "def add(a, b):", "1, 2, 3,"]
GREEDY = SamplingParams(temperature=0, max_tokens=10, logprobs=1, ignore_eos=True)


def assert_same(reference, outputs, tol: float = 1e-4) -> None:
    for a, b in zip(reference, outputs, strict=True):
        ca, cb = a.outputs[0], b.outputs[0]
        assert ca.token_ids == cb.token_ids
        for la, lb, t in zip(ca.logprobs, cb.logprobs, ca.token_ids, strict=True):
            assert abs(la[t].logprob - lb[t].logprob) < tol


@pytest.mark.parametrize("num_kv_heads", [2, 1])  # 1: the KV head is replicated on both ranks
def test_tp2_matches_single_process(tiny_model_factory, make_llm, num_kv_heads):
    path = tiny_model_factory(num_kv_heads=num_kv_heads)
    reference = make_llm(path).generate(PROMPTS, GREEDY, use_tqdm=False)
    llm = make_llm(path, tensor_parallel_size=2)
    assert_same(reference, llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    stats = llm.engine.runner.stats()
    assert len(stats.busy_s) == 2 and all(b > 0 for b in stats.busy_s)
    assert 0 < stats.comm_share < 1


def test_tp2_gloo_backend(tiny_llama_dir, make_llm):
    reference = make_llm(tiny_llama_dir).generate(PROMPTS[:2], GREEDY, use_tqdm=False)
    llm = make_llm(tiny_llama_dir, tensor_parallel_size=2, distributed_backend="gloo")
    assert_same(reference, llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False))


def test_tp3_six_heads_and_shards(tmp_path, make_llm):
    path = build_six_head_model(str(tmp_path / "six"))
    reference = make_llm(path).generate(PROMPTS, GREEDY, use_tqdm=False)
    llm = make_llm(path, tensor_parallel_size=3)
    assert_same(reference, llm.generate(PROMPTS, GREEDY, use_tqdm=False))
    runner = llm.engine.runner.runner
    qkv = llm.engine.runner.state.model.model.layers[0].self_attn.qkv_proj
    assert qkv.weight.shape[0] == (2 + 2 * 1) * 8  # 2 query heads and 1 KV head of 8 dims on this rank
    assert runner.kv_caches[0][0].numel() == (64 + 1) * 16 * 1 * 8  # only that KV head (+1: the scratch block)


def test_tp_not_dividing_heads_is_refused(tiny_llama_dir, make_llm):
    with pytest.raises(ValueError, match="does not divide the model's 4 attention heads"):
        make_llm(tiny_llama_dir, tensor_parallel_size=3)


def test_dead_worker_is_reported(tiny_llama_dir, make_llm):
    llm = make_llm(tiny_llama_dir, tensor_parallel_size=2)
    executor = llm.engine.runner
    os.kill(executor._procs[0].pid, signal.SIGKILL)
    executor._procs[0].wait(timeout=10)
    assert not executor.alive
    with pytest.raises(PeerLost, match="rank 1 exited"):
        executor.execute(None)
    with pytest.raises(PeerLost):  # through the engine too: an error, not a hang
        llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)
