"""The same greedy request gives the same tokens, whatever else the engine is doing, on the bundled
model in the default dtype.

Default numerics: cold and warm (prefix hit), with chunked prefill forced small, with the prefix
cache off, after a preemption and beside up to 15 other decoding requests; over the server,
streamed and non-streamed, first request or repeat. ``deterministic=True``: also inside a batch
of 32 mixed prompts (more than 16 decoding rows per step)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from pagoda import LLM, SamplingParams
from pagoda.engine.args import EngineArgs
from pagoda.server.config import ServerConfig
from pagoda.server.engine_process_client import EngineProcessClient

sys.path.insert(0, str(Path(__file__).parent / "server"))
from live_server import API_KEY, LiveServer  # noqa: E402

pytestmark = pytest.mark.slow

# the example: its first answer came from a bf16 tie of "L" and "The"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Tell me a short story about a lighthouse keeper and a storm."}]
TOPICS = ["the sea", "prime numbers", "a red bicycle", "paged attention", "bread", "the moon", "owls", "rain",
          "chess", "volcanoes", "a lost key", "tea", "Paris", "robots", "autumn", "music"]
GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)


def _others(n: int, seed: int) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    asks = ["Write a haiku about {}.", "Explain {} to a child.", "List three facts about {}.",
            "Give a one-line joke about {}.", "Describe {} in a long and detailed paragraph, with examples."]
    return [[{"role": "user", "content": rng.choice(asks).format(rng.choice(TOPICS))}] for _ in range(n)]


def _tokens(llm: LLM, conversations: list[list[dict[str, str]]]) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in llm.chat(conversations, GREEDY, use_tqdm=False)]


def _reference(**options) -> dict[str, list[int]]:
    """Each probe request run alone on a fresh engine (cold: nothing cached)."""
    return {"question": _tokens(LLM(show_progress=False, **options), [QUESTION])[0],
            "story": _tokens(LLM(show_progress=False, **options), [STORY])[0]}


@pytest.fixture(scope="module")
def reference() -> dict[str, list[int]]:
    return _reference()


def test_warm_and_beside_other_requests(reference):
    llm = LLM(show_progress=False)
    assert _tokens(llm, [QUESTION]) == [reference["question"]]  # cold
    assert _tokens(llm, [QUESTION]) == [reference["question"]]  # warm: the prompt comes from the prefix cache
    assert llm.engine.get_stats().prefix_cache_hits_total > 0
    batch = _others(10, seed=1)  # 12 decoding rows per step at most: every row on a row-invariant kernel
    batch.insert(3, QUESTION)
    batch.insert(8, STORY)
    out = _tokens(llm, batch)
    assert (out[3], out[8]) == (reference["question"], reference["story"])


def test_deterministic_inside_a_batch_of_32():
    reference = _reference(deterministic=True)
    llm = LLM(show_progress=False, deterministic=True)
    assert _tokens(llm, [QUESTION]) == [reference["question"]]
    assert _tokens(llm, [QUESTION]) == [reference["question"]]
    batch = _others(30, seed=1)
    batch.insert(7, QUESTION)
    batch.insert(19, STORY)
    out = _tokens(llm, batch)
    assert out[7] == reference["question"]
    assert out[19] == reference["story"]


def test_small_chunks_and_no_prefix_cache(reference):
    chunked = LLM(show_progress=False, max_num_batched_tokens=64)
    batch = [STORY] + _others(5, seed=2) + [QUESTION]
    out = _tokens(chunked, batch)
    assert (out[0], out[-1]) == (reference["story"], reference["question"])
    uncached = LLM(show_progress=False, enable_prefix_caching=False)
    for _ in range(2):
        out = _tokens(uncached, [QUESTION] + _others(3, seed=3) + [STORY])
        assert (out[0], out[-1]) == (reference["question"], reference["story"])


def test_after_a_preemption(reference):
    # 12 blocks of 16 tokens cannot hold eight ~80-token requests: the newest are preempted and recomputed
    llm = LLM(show_progress=False, num_kv_blocks=12)
    batch = [QUESTION] + _others(6, seed=4) + [STORY]
    out = _tokens(llm, batch)
    assert llm.engine.get_stats().num_preemptions_total > 0
    assert (out[0], out[-1]) == (reference["question"], reference["story"])


def test_server_streamed_and_not_first_and_repeat(reference):
    client = EngineProcessClient(EngineArgs(show_progress=False))
    client.start()
    server = LiveServer(client, {"main": ServerConfig(served_model_name="default", api_key=API_KEY)})
    try:
        api = server.openai()
        texts = []
        for stream in (True, False, True, False):
            kwargs = dict(model="default", messages=QUESTION, temperature=0, max_tokens=40)
            if stream:
                chunks = api.chat.completions.create(stream=True, **kwargs)
                texts.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
            else:
                texts.append(api.chat.completions.create(**kwargs).choices[0].message.content)
        assert len(set(texts)) == 1, texts
        assert texts[0]
    finally:
        server.stop()
        client.shutdown()
