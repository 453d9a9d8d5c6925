"""Pipeline parallelism: stages hold their layers only; greedy tokens equal to one process."""

from __future__ import annotations

import pytest
from reference import assert_all_blocks_returned
from test_tensor_parallel import GREEDY, PROMPTS, assert_same
from torch import nn

from pagoda import SamplingParams
from pagoda.distributed.executor import split_micro_batches
from pagoda.distributed.parallel_config import ParallelConfig
from pagoda.distributed.pipeline_stage import split_layers
from pagoda.engine.scheduler_output import ScheduledRequest, SchedulerOutput


def test_split_layers():
    assert split_layers(30, 2) == [range(0, 15), range(15, 30)]
    assert split_layers(5, 3) == [range(0, 2), range(2, 4), range(4, 5)]
    assert split_layers(5, 2, [1, 4]) == [range(0, 1), range(1, 5)]
    # balanced by cost: stage 0 also runs the LM head (SmolLM2-135M's weighs 8 layers)
    assert split_layers(30, 2, first_stage_extra=8.0) == [range(0, 11), range(11, 30)]
    assert [len(r) for r in split_layers(30, 3, first_stage_extra=8.0)] == [5, 13, 12]
    assert split_layers(2, 2, first_stage_extra=50.0) == [range(0, 1), range(1, 2)]  # every stage keeps one
    with pytest.raises(ValueError, match="summing to 5"):
        split_layers(5, 2, [1, 3])


def test_rebalanced_stage_sizes_from_measured_work():
    from pagoda.distributed.pipeline_stage import rebalanced_stage_sizes

    ranges = split_layers(30, 2, [11, 19])
    # a layer costs 1 s (stage 1: 19 layers, 19 s); stage 0's extra is 8 s: already balanced
    assert rebalanced_stage_sizes([19.0, 19.0], ranges) == [11, 19]
    # its extra is 4 s: stage 0 should take two more layers
    assert rebalanced_stage_sizes([15.0, 19.0], ranges) == [13, 17]
    # TP 2: per-stage work is the mean of its ranks
    assert rebalanced_stage_sizes([15.0, 15.0, 19.0, 19.0], ranges, tp=2) == [13, 17]
    assert rebalanced_stage_sizes([5.0], [range(0, 30)]) == [30]


def test_default_split_counts_the_lm_head_on_stage_0():
    from pagoda.config import ModelConfig
    from pagoda.distributed.pipeline_stage import lm_head_cost_in_layers

    smollm2 = ModelConfig("LlamaForCausalLM", 49152, 576, 1536, 30, 9, 3, 64, 1e-5, 1e4, None, 8192, True, False,
                          None, 8192)
    assert 7.5 < lm_head_cost_in_layers(smollm2) < 8.5
    assert [len(r) for r in ParallelConfig(1, 2).stage_layer_ranges(smollm2)] == [11, 19]


def test_micro_batches_balance_tokens():
    reqs = [ScheduledRequest(None, 0, n, []) for n in (100, 1, 1, 1, 50, 49)]
    parts = split_micro_batches(SchedulerOutput(reqs, block_copies=[(1, 2)]), 2)
    assert sorted(sum(s.num_new_tokens for s in p.scheduled) for p in parts) == [101, 101]
    assert parts[0].block_copies == [(1, 2)] and parts[1].block_copies == []


def test_pp2_matches_single_process(tiny_llama_dir, make_llm):
    params = SamplingParams(temperature=0, max_tokens=10, logprobs=1, ignore_eos=True, prompt_logprobs=1)
    reference = make_llm(tiny_llama_dir).generate(PROMPTS, params, use_tqdm=False)
    llm = make_llm(tiny_llama_dir, pipeline_parallel_size=2)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    assert_same(reference, outputs)
    for a, b in zip(reference, outputs, strict=True):  # prompt logprobs come through the driver's LM head
        assert [sorted(p) for p in a.prompt_logprobs[1:]] == [sorted(p) for p in b.prompt_logprobs[1:]]
    state = llm.engine.runner.state
    layers = state.model.model.layers
    assert not isinstance(layers[0], nn.Identity) and isinstance(layers[1], nn.Identity)  # stage 0: layer 0 only
    assert state.model.model.norm is None and len(state.runner.kv_caches) == 1
    stats = llm.engine.runner.stats()
    assert stats.wait_s[1] >= 0 and 0 <= stats.bubble_rate < 1


def test_virtual_engines_keep_steps_in_flight(tiny_llama_dir, make_llm):
    """PP 2 runs two schedulers: a step of one enters the pipeline while the other's is still in
    it; outputs equal one process, with seeded sampling and n > 1 too."""
    params = [GREEDY, SamplingParams(temperature=0.8, seed=7, max_tokens=8, n=2, ignore_eos=True)]
    prompts = PROMPTS + ["Once upon a time", "A B C D E F"]
    reference = make_llm(tiny_llama_dir).generate(prompts, [params[i % 2] for i in range(6)], use_tqdm=False)
    llm = make_llm(tiny_llama_dir, pipeline_parallel_size=2, pipeline_virtual_engines=2)
    engine = llm.engine
    assert len(engine.schedulers) == 2 and engine.runner.num_virtual_engines == 2
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, params[i % 2])
    assert sorted(len(s.requests) for s in engine.schedulers) == [3, 3]  # shared out
    assert engine.step() == [] and len(engine._in_flight) == 1  # the pipeline fills first
    outputs: dict[str, object] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            outputs[out.request_id] = out
        assert len(engine._in_flight) <= 1
    for i, ref in enumerate(reference):
        got = outputs[str(i)]
        assert [c.token_ids for c in got.outputs] == [c.token_ids for c in ref.outputs]
    assert_all_blocks_returned(engine)


def test_abort_while_in_flight_returns_blocks(tiny_llama_dir, make_llm):
    llm = make_llm(tiny_llama_dir, pipeline_parallel_size=2, pipeline_virtual_engines=2)
    engine = llm.engine
    for i, p in enumerate(PROMPTS):
        engine.add_request(str(i), p, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    engine.step()
    in_flight = [s.request.request_id for s in engine._in_flight[0][1].scheduled]
    engine.abort_request(in_flight)  # its step is still in the pipeline
    finished = set()
    while engine.has_unfinished_requests():
        finished |= {o.request_id for o in engine.step() if o.finished}
    assert finished == {str(i) for i in range(4)} - set(in_flight)
    assert_all_blocks_returned(engine)


def test_tp2_pp2(tiny_llama_dir, make_llm):
    reference = make_llm(tiny_llama_dir).generate(PROMPTS, GREEDY, use_tqdm=False)
    llm = make_llm(tiny_llama_dir, tensor_parallel_size=2, pipeline_parallel_size=2)
    assert_same(reference, llm.generate(PROMPTS, GREEDY, use_tqdm=False))


def test_pp_larger_than_layers_is_refused(tiny_llama_dir, make_llm):
    with pytest.raises(ValueError, match="exceeds the model's 2 layers"):
        make_llm(tiny_llama_dir, pipeline_parallel_size=3)


def test_explicit_stage_sizes_are_checked():
    from pagoda.config import ModelConfig

    config = ModelConfig("LlamaForCausalLM", 384, 64, 128, 2, 4, 2, 16, 1e-5, 1e4, None, 512, True, False,
                         None, 512)
    with pytest.raises(ValueError, match="stage sizes"):
        ParallelConfig(1, 2, pipeline_stage_layers=(2, 0)).validate(config)
