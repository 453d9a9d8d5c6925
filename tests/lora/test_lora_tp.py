"""LoRA under tensor parallelism: every rank holds its shards of the adapters the driver places."""

from __future__ import annotations

import pytest
from adapters import load_base, peft_reference
from reference import assert_greedy_matches, assert_logprobs_match
from test_lora_vs_peft import PARAMS, prompts, requests

from pagoda import LLM


@pytest.mark.slow
def test_tp2_mixed_adapters_match_peft(tiny_llama_dir, lora_adapters):
    llm = LLM(tiny_llama_dir, dtype="float32", tensor_parallel_size=2, enable_lora=True, max_loras=2,
              num_kv_blocks=128, show_progress=False)
    try:
        reqs = requests(lora_adapters)
        names = [None, *reqs] * 2
        ps = prompts(len(names), 21)
        outs = llm.generate(ps, PARAMS, use_tqdm=False, lora_request=[None if n is None else reqs[n] for n in names])
        refs = {name: peft_reference(tiny_llama_dir, path) for name, path in lora_adapters.items()}
        refs[None] = load_base(tiny_llama_dir)
        for name, prompt, out in zip(names, ps, outs, strict=True):
            o = out.outputs[0]
            assert_greedy_matches(refs[name], prompt, o.token_ids)
            assert_logprobs_match(refs[name], prompt, o.token_ids, o.logprobs)
    finally:
        llm.shutdown()


def test_pipeline_parallel_lora_is_refused(tiny_llama_dir):
    with pytest.raises(ValueError, match="pipeline"):
        LLM(tiny_llama_dir, pipeline_parallel_size=2, enable_lora=True, show_progress=False)
