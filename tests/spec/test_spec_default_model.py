"""Greedy speculation on the bundled model in its default dtype (bfloat16 activations, GGUF 4-bit
weights): the same tokens as plain decoding, alone and in batches, for the committed grounded
workload (where proposals are long and mostly right) and ordinary chats."""

from __future__ import annotations

import pytest

from pagoda import LLM, SamplingParams
from pagoda.bench.spec_bench import grounded_prompts

pytestmark = pytest.mark.slow

CHATS = [[{"role": "user", "content": p["content"]}] for p in grounded_prompts()[:6]] + [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Tell me a short story about a lighthouse keeper and a storm."}],
]


@pytest.fixture(scope="module")
def plain_outputs():
    llm = LLM(show_progress=False)
    params = SamplingParams(temperature=0, max_tokens=64)
    return [list(llm.chat([c], params, use_tqdm=False)[0].outputs[0].token_ids) for c in CHATS]


def test_greedy_equal_alone_and_batched(plain_outputs):
    spec = LLM(show_progress=False, speculative_config={"method": "ngram", "num_speculative_tokens": 4})
    params = SamplingParams(temperature=0, max_tokens=64)
    alone = [list(spec.chat([c], params, use_tqdm=False)[0].outputs[0].token_ids) for c in CHATS]
    assert alone == plain_outputs
    batched = [list(o.outputs[0].token_ids) for o in spec.chat(CHATS, params, use_tqdm=False)]
    assert batched == plain_outputs  # warm now: prefix hits too
    stats = spec.engine.get_stats().spec
    assert stats.num_accepted_tokens > 0.3 * stats.num_draft_tokens > 0
