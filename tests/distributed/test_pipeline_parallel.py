"""Pipeline parallelism: stages hold their layers only; greedy tokens equal to one process."""

from __future__ import annotations

import pytest
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
    with pytest.raises(ValueError, match="summing to 5"):
        split_layers(5, 2, [1, 3])


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
        ParallelConfig(1, 2, stage_layers=(2, 0)).validate(config)
