"""Speculation with tensor and pipeline parallel ranks: the driver verifies; the same greedy tokens
as one process without speculation."""

from __future__ import annotations

import pytest

from pagoda import LLM, SamplingParams

PROMPTS = [[7, 8, 9, 7, 8, 9, 7, 8], [20, 21, 20, 21, 20], [5, 6, 7, 8, 9, 10, 5, 6, 7]]
SPEC = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "adaptive": False}


@pytest.mark.parametrize("layout", [{"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}])
def test_parallel_layouts_speculate_exactly(tiny_llama_dir, layout):
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    plain = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=64, show_progress=False)
    want = [list(o.outputs[0].token_ids) for o in plain.generate(PROMPTS, params, use_tqdm=False)]
    with LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=64, show_progress=False, speculative_config=SPEC,
             **layout) as llm:
        got = [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, params, use_tqdm=False)]
        assert llm.engine.get_stats().spec.num_accepted_tokens > 0
    assert got == want
