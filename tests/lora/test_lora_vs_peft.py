"""Pagoda's greedy tokens and logprobs with LoRA adapters equal peft's ``PeftModel`` (float32)."""

from __future__ import annotations

import random

import pytest
import torch
from adapters import load_base, peft_reference
from reference import (
    assert_all_blocks_returned,
    assert_greedy_matches,
    assert_logprobs_match,
    reference_logits,
)

from pagoda import LLM, LoRARequest, SamplingParams

PARAMS = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=2)


def prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 384) for _ in range(rng.randint(3, 40))] for _ in range(n)]


@pytest.fixture(scope="module")
def references(tiny_llama_dir, lora_adapters):
    refs = {name: peft_reference(tiny_llama_dir, path) for name, path in lora_adapters.items()}
    refs[None] = load_base(tiny_llama_dir)
    return refs


def requests(lora_adapters) -> dict[str, LoRARequest]:
    return {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(lora_adapters.items())}


def test_each_adapter_changes_the_model(references):
    """Guards the other tests: an adapter that changed nothing would make them vacuous."""
    prompt = prompts(1, 0)[0]
    base = reference_logits(references[None], prompt[:-1], prompt[-1:])
    for name, ref in references.items():
        if name is not None:
            diff = float((reference_logits(ref, prompt[:-1], prompt[-1:]) - base).abs().max())
            assert diff > 0.05, f"adapter {name} barely changes the logits ({diff})"


@pytest.mark.parametrize("max_loras,batching", [(4, "continuous"), (1, "continuous"), (1, "static")],
                         ids=["all-resident", "slot-swapping", "static-batches"])
def test_mixed_batch_matches_peft_per_adapter(tiny_llama_dir, lora_adapters, references, max_loras, batching):
    """Requests for three adapters and the base in one generate call: one step holds them all with
    four slots; with one slot the scheduler runs one adapter at a time and swaps the others in (a
    static batch admits only requests whose adapter fits the slots)."""
    llm = LLM(tiny_llama_dir, dtype="float32", enable_lora=True, max_loras=max_loras, max_lora_rank=16,
              num_kv_blocks=256, max_num_batched_tokens=256, show_progress=False, batching=batching)
    reqs = requests(lora_adapters)
    names = [None, *reqs] * 3
    ps = prompts(len(names), 1)
    outputs = llm.generate(ps, PARAMS, use_tqdm=False, lora_request=[None if n is None else reqs[n] for n in names])
    outs_by_adapter: dict[object, list[list[int]]] = {}
    for name, prompt, out in zip(names, ps, outputs, strict=True):
        o = out.outputs[0]
        assert len(o.token_ids) == 12
        assert_greedy_matches(references[name], prompt, o.token_ids)
        assert_logprobs_match(references[name], prompt, o.token_ids, o.logprobs)
        outs_by_adapter.setdefault(name, []).append(o.token_ids)
    # the same prompt under different adapters gives different text
    same = llm.generate([ps[0]] * 4, PARAMS, use_tqdm=False, lora_request=[None, *reqs.values()])
    assert len({tuple(o.outputs[0].token_ids) for o in same}) == 4
    manager = llm.engine.runner.lora
    if max_loras == 1:
        assert manager.num_swaps >= 3  # every adapter came in at least once
    else:
        assert manager.num_swaps == 3  # loaded once each, never swapped out
    llm.engine.check_integrity()
    assert_all_blocks_returned(llm.engine)
    llm.shutdown()


def test_prefix_cache_is_per_adapter(tiny_llama_dir, lora_adapters, references):
    """A prompt cached under one adapter is a hit for that adapter only; outputs stay exact."""
    llm = LLM(tiny_llama_dir, dtype="float32", enable_lora=True, max_loras=2, num_kv_blocks=256,
              block_size=16, show_progress=False)
    reqs = requests(lora_adapters)
    a, b = reqs["all-r8"], reqs["qv-r4-rslora"]
    prompt = prompts(1, 5)[0] + prompts(1, 6)[0] + list(range(10, 60))  # several full blocks
    first = llm.generate([prompt], PARAMS, use_tqdm=False, lora_request=a)[0]
    assert first.num_cached_tokens == 0
    again = llm.generate([prompt], PARAMS, use_tqdm=False, lora_request=a)[0]
    assert again.num_cached_tokens >= 16  # a hit for the same adapter
    assert again.outputs[0].token_ids == first.outputs[0].token_ids
    for lora, name in ((b, "qv-r4-rslora"), (None, None)):
        out = llm.generate([prompt], PARAMS, use_tqdm=False, lora_request=lora)[0]
        assert out.num_cached_tokens == 0, f"{name} reused another adapter's KV"
        assert_greedy_matches(references[name], prompt, out.outputs[0].token_ids)
        assert_logprobs_match(references[name], prompt, out.outputs[0].token_ids, out.outputs[0].logprobs)
    llm.shutdown()


def test_rows_are_bitwise_the_same_alone_and_in_a_mixed_batch(tiny_llama_dir, lora_adapters):
    """``deterministic=True``: a request's tokens and logprobs do not depend on the other requests (and
    adapters) of its steps."""
    llm = LLM(tiny_llama_dir, dtype="float32", enable_lora=True, max_loras=4, num_kv_blocks=512,
              max_num_batched_tokens=512, enable_prefix_caching=False, deterministic=True, show_progress=False)
    reqs = list(requests(lora_adapters).values())
    ps = prompts(24, 9)
    loras = [reqs[i % 3] if i % 4 else None for i in range(24)]
    batch = llm.generate(ps, PARAMS, use_tqdm=False, lora_request=loras)
    for i in (1, 2, 3, 4, 23):
        alone = llm.generate([ps[i]], PARAMS, use_tqdm=False, lora_request=loras[i])[0].outputs[0]
        together = batch[i].outputs[0]
        assert alone.token_ids == together.token_ids
        assert [{t: lp.logprob for t, lp in e.items()} for e in alone.logprobs] == \
               [{t: lp.logprob for t, lp in e.items()} for e in together.logprobs]
    llm.shutdown()


def test_bf16_model_with_adapters_runs(tiny_llama_dir, lora_adapters, references):
    """bfloat16 (oneDNN-packed adapter weights): close to peft's float32 on the first tokens."""
    llm = LLM(tiny_llama_dir, dtype="bfloat16", enable_lora=True, num_kv_blocks=128, show_progress=False)
    req = requests(lora_adapters)["all-r8"]
    prompt = prompts(1, 11)[0]
    out = llm.generate([prompt], PARAMS, use_tqdm=False, lora_request=req)[0].outputs[0]
    ref = torch.log_softmax(reference_logits(references["all-r8"], prompt, out.token_ids), -1)
    assert abs(out.logprobs[0][out.token_ids[0]].logprob - float(ref[0, out.token_ids[0]])) < 0.1
    assert out.token_ids[0] == int(ref[0].argmax())
    llm.shutdown()

