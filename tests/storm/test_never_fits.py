"""A request that could never fit the KV pool is refused when it is added, instead of waiting forever: the
engine caps the context at the pool's size (engine_factory), so the context-length checks refuse it."""

from __future__ import annotations

import pytest

from pagoda import LLM, SamplingParams
from pagoda.errors import InvalidRequestError


@pytest.fixture(scope="module")
def small_pool_llm(tiny_llama_dir):
    return LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=4, block_size=16, show_progress=False)  # 64 tokens


def test_the_context_is_capped_at_the_pool(small_pool_llm):
    assert small_pool_llm.engine.input_processor.max_model_len == 64


def test_prompt_past_the_pool_is_refused(small_pool_llm):
    with pytest.raises(InvalidRequestError) as info:
        small_pool_llm.generate([[5] * 64], SamplingParams(max_tokens=1, temperature=0))
    assert info.value.param == "prompt"


def test_unspecified_max_tokens_ends_where_the_pool_does(small_pool_llm):
    out = small_pool_llm.generate([[5] * 10], SamplingParams(max_tokens=None, temperature=0, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 54 and out.outputs[0].finish_reason == "length"
    # and the engine goes on serving what fits
    assert len(small_pool_llm.generate([[5] * 10], SamplingParams(max_tokens=54, temperature=0,
                                                                    ignore_eos=True))[0].outputs[0].token_ids) == 54
