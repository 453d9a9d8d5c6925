"""Tensor parallelism with Ray placing the ranks (``distributed_executor_backend="ray"``): TP = 2 split over
the two nodes of the test cluster (one CPU each, so Ray must spread them) gives one process's tokens, its
ranks linked by gloo over TCP (no shared memory between Ray nodes), and a layout the cluster cannot hold is
refused at once."""

from __future__ import annotations

import time

import pytest
import ray
from ray_nodes import HEAD_IP, WORKER_IP

from pagoda import LLM, SamplingParams
from pagoda.distributed.ray_cluster import RayUnavailableError
from pagoda.distributed.ray_executor import RayExecutor

pytestmark = pytest.mark.slow

PROMPTS = ["The quick brown fox", "Hello world! How are", "def add(a, b):", "1, 2, 3,"]
GREEDY = SamplingParams(temperature=0, max_tokens=10, logprobs=1, ignore_eos=True)
OPTIONS = dict(dtype="float32", num_kv_blocks=64, show_progress=False, num_threads=1)


def test_tp2_ranks_on_two_nodes_match_one_process(ray_cluster, tiny_llama_dir):
    reference = LLM(tiny_llama_dir, **OPTIONS).generate(PROMPTS, GREEDY, use_tqdm=False)
    llm = LLM(tiny_llama_dir, tensor_parallel_size=2, distributed_executor_backend="ray", **OPTIONS)
    try:
        runner = llm.engine.runner
        assert isinstance(runner, RayExecutor)
        print("\n".join(runner.rank_placements))
        assert runner.parallel.nnodes == 2 and runner.parallel.master_addr == HEAD_IP
        assert runner.state.tp_comm is None  # the TP all-reduce goes over gloo: the ranks are on two nodes
        (actor,) = runner._rank_actors
        where = ray.get(actor.where.remote(), timeout=30)
        assert where.node_ip == WORKER_IP and where.node_id != ray.get_runtime_context().get_node_id()
        outputs = llm.generate(PROMPTS, GREEDY, use_tqdm=False)
        for a, b in zip(reference, outputs, strict=True):
            ca, cb = a.outputs[0], b.outputs[0]
            assert ca.token_ids == cb.token_ids
            for la, lb, t in zip(ca.logprobs, cb.logprobs, ca.token_ids, strict=True):
                assert abs(la[t].logprob - lb[t].logprob) < 1e-4
        stats = runner.stats()
        assert len(stats.busy_s) == 2 and all(b > 0 for b in stats.busy_s)
    finally:
        llm.shutdown()
    deadline = time.monotonic() + 30  # the placement group is gone: both CPUs free again
    while ray.available_resources().get("CPU") != 2:
        assert time.monotonic() < deadline, ray.available_resources()
        time.sleep(0.1)


def test_more_ranks_than_the_cluster_holds_fail_at_once(ray_cluster, tiny_llama_dir):
    t0 = time.monotonic()
    with pytest.raises(RayUnavailableError, match=r"4 tensor/pipeline parallel rank.*the cluster has \{CPU: 2\}"):
        LLM(tiny_llama_dir, tensor_parallel_size=2, pipeline_parallel_size=2, distributed_executor_backend="ray",
            **OPTIONS)
    assert time.monotonic() - t0 < 30
