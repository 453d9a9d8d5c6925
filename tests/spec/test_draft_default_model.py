"""Draft-model speculation on the bundled model in its default dtype (bfloat16 activations, GGUF
4-bit weights), with a self-draft of its first layers: the same greedy tokens as plain decoding,
alone and batched."""

from __future__ import annotations

import pytest

from pagoda import LLM, SamplingParams
from pagoda.bench.spec_bench import grounded_prompts

pytestmark = pytest.mark.slow

CHATS = [[{"role": "user", "content": p["content"]}] for p in grounded_prompts()[:3]] + [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Tell me a short story about a lighthouse keeper and a storm."}],
]


def test_self_draft_greedy_equal_alone_and_batched():
    params = SamplingParams(temperature=0, max_tokens=48)
    plain = LLM(show_progress=False)
    want = [list(plain.chat([c], params, use_tqdm=False)[0].outputs[0].token_ids) for c in CHATS]
    del plain
    spec = LLM(show_progress=False, speculative_config={"method": "draft_model", "draft_num_layers": 10,
                                                        "num_speculative_tokens": 3, "adaptive": False})
    alone = [list(spec.chat([c], params, use_tqdm=False)[0].outputs[0].token_ids) for c in CHATS]
    assert alone == want
    batched = [list(o.outputs[0].token_ids) for o in spec.chat(CHATS, params, use_tqdm=False)]
    assert batched == want
    stats = spec.engine.get_stats().spec
    assert stats.num_draft_tokens > 0 and stats.num_accepted_tokens > 0
