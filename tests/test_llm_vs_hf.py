"""Greedy token ids and logprobs equal transformers' on tiny random models (float32)."""

import random

import pytest
import torch
from reference import assert_all_blocks_returned, assert_greedy_matches, assert_logprobs_match
from transformers import AutoModelForCausalLM

from pagoda import LLM, SamplingParams

VARIANTS = {
    "llama-gqa-tied": dict(arch="llama", tie=True, num_kv_heads=2),
    "llama-untied-mha": dict(arch="llama", tie=False, num_kv_heads=4),
    "llama3-rope-scaling": dict(arch="llama", tie=False, num_kv_heads=1, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}),
    "qwen2-bias": dict(arch="qwen2", tie=True, num_kv_heads=2),
}


def random_prompts(n: int, vocab: int, seed: int, lo: int = 1, hi: int = 60) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_and_logprobs_match_transformers(tiny_model_factory, variant):
    path = tiny_model_factory(**VARIANTS[variant])
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = LLM(path, dtype="float32", num_kv_blocks=256, max_num_batched_tokens=128, show_progress=False)
    prompts = random_prompts(12, ref.config.vocab_size, seed=len(variant))
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=3)
    outputs = llm.generate(prompts, params)
    for prompt, out in zip(prompts, outputs, strict=True):
        o = out.outputs[0]
        assert out.prompt_token_ids == prompt and len(o.token_ids) == 24 and o.finish_reason == "length"
        assert_greedy_matches(ref, prompt, o.token_ids)
        assert_logprobs_match(ref, prompt, o.token_ids, o.logprobs)
        assert all(len(entry) >= 3 for entry in o.logprobs)
    llm.engine.check_integrity()
    assert_all_blocks_returned(llm.engine)


def test_same_tokens_alone_and_in_a_batch_of_64(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=512, max_num_batched_tokens=512,
              show_progress=False)
    prompts = random_prompts(64, 384, seed=7)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    batch = llm.generate(prompts, params, use_tqdm=False)
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    for i in (0, 17, 63):
        alone = llm.generate([prompts[i]], params)[0].outputs[0].token_ids
        if alone != batch[i].outputs[0].token_ids:  # only a reference tie may separate them
            assert_greedy_matches(ref, prompts[i], alone)
            assert_greedy_matches(ref, prompts[i], batch[i].outputs[0].token_ids)


def test_chunked_prefill_and_preemption_do_not_change_outputs(tiny_llama_dir):
    prompts = random_prompts(10, 384, seed=3, lo=20, hi=90)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    roomy = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=512, show_progress=False)
    expected = [o.outputs[0].token_ids for o in roomy.generate(prompts, params)]
    # 16-token budget: prompts are prefilled in chunks; 24 blocks of 16: requests are preempted
    tight = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=24, max_num_batched_tokens=16, show_progress=False)
    got = [o.outputs[0].token_ids for o in tight.generate(prompts, params)]
    assert tight.engine.get_stats().num_preemptions_total > 0
    assert got == expected
    tight.engine.check_integrity()
    assert_all_blocks_returned(tight.engine)
