"""Draft-model speculation on tiny random fp32 models: the same tokens (and logprobs) as decoding
one token at a time, whatever the draft, the batch, prefix hits, preemption or n; the draft's KV
cache follows the target's (a draft identical to the target has every proposal accepted); bad
drafts are refused at start, naming the field."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_workload import run_random_workload

from pagoda import LLM, SamplingParams

K = 3


def _draft(**options) -> dict:
    return {"method": "draft_model", "num_speculative_tokens": K, "adaptive": False, **options}


def _prompts(n: int, seed: int, vocab: int = 384) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(4, 40))] for _ in range(n)]


def _run(llm: LLM, prompts, params) -> list[list[list[int]]]:
    return [[list(c.token_ids) for c in o.outputs] for o in llm.generate(prompts, params, use_tqdm=False)]


def _llm(model: str, **options) -> LLM:
    return LLM(model, dtype="float32", num_kv_blocks=256, show_progress=False, **options)


@pytest.fixture(scope="module")
def other_draft_dir(tiny_model_factory):
    return tiny_model_factory(seed=1)  # another random model with the same tokenizer


@pytest.fixture(scope="module")
def plain(tiny_llama_dir):
    return _llm(tiny_llama_dir)


@pytest.fixture(scope="module")
def drafts(tiny_llama_dir, other_draft_dir):
    """A self-draft of the target's first layer (of 2), and another model as the draft."""
    return {"self-1": _llm(tiny_llama_dir, speculative_config=_draft(draft_num_layers=1)),
            "other": _llm(tiny_llama_dir, speculative_config=_draft(model=other_draft_dir))}


def test_draft_falls_behind_and_catches_up(tiny_llama_dir, plain):
    """With a cost table where no proposal pays, requests only probe (one token every 16 steps) and
    the draft skips them in between; each probe's draft pass first catches up on the positions it
    skipped, so a draft identical to the target still has its proposals kept."""
    spec = _llm(tiny_llama_dir, speculative_config={"method": "draft_model", "draft_num_layers": 2,
                                                    "num_speculative_tokens": K})
    cost = spec.engine.scheduler.speculator.step_cost
    for rows in range(1, 65):
        cost.record(rows, 0.01 if rows <= 8 else 1.0)
    cost.learn = False
    prompts = _prompts(8, seed=23)
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    assert _run(spec, prompts, params) == _run(plain, prompts, params)
    stats = spec.engine.get_stats().spec
    assert 8 * 2 <= stats.num_drafts <= 8 * 4 and stats.num_draft_tokens == stats.num_drafts  # probes only
    assert stats.num_accepted_tokens >= 0.9 * stats.num_draft_tokens


@pytest.mark.parametrize("draft", ["self-1", "other"])
@pytest.mark.parametrize("batch", [1, 8, 32])
def test_greedy_equal_across_batch_sizes(plain, drafts, draft, batch):
    spec = drafts[draft]
    prompts = _prompts(batch, seed=batch)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    before = spec.engine.get_stats().spec.num_draft_tokens
    assert _run(spec, prompts, params) == _run(plain, prompts, params)
    assert spec.engine.get_stats().spec.num_draft_tokens >= batch * K  # the draft really proposed
    spec.engine.check_integrity()
    assert before < spec.engine.get_stats().spec.num_draft_tokens


def test_draft_identical_to_target_is_always_accepted(tiny_llama_dir, plain):
    """Both layers of the target as the draft: its proposals are the target's own greedy tokens, so
    all are kept, which holds only if the draft's KV cache follows the target's (kept and rejected
    proposals, the catch-up after a proposal kept whole, prefix hits)."""
    spec = _llm(tiny_llama_dir, speculative_config=_draft(draft_num_layers=2))
    prompts = _prompts(8, seed=21)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    want = _run(plain, prompts, params)
    for _ in range(2):  # cold, then from the prefix cache
        assert _run(spec, prompts, params) == want
    stats = spec.engine.get_stats().spec
    assert stats.num_draft_tokens > 8 * 2 * 30 / (K + 1)
    assert stats.num_accepted_tokens >= 0.98 * stats.num_draft_tokens
    assert stats.accepted_per_position[0] >= 0.98 * stats.num_drafts


def test_prefix_hits_logprobs_and_stops(plain, drafts):
    spec = drafts["self-1"]
    prompts = _prompts(6, seed=7)
    free = _run(plain, prompts, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    stop_id = free[0][0][len(free[0][0]) // 2]
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop_token_ids=[stop_id], logprobs=2)
    a = plain.generate(prompts, params, use_tqdm=False)
    hits = spec.engine.get_stats().prefix_cache_hits_total
    for _ in range(2):  # the second time from the prefix cache
        b = spec.generate(prompts, params, use_tqdm=False)
        for x, y in zip(a, b, strict=True):
            assert list(x.outputs[0].token_ids) == list(y.outputs[0].token_ids)
            assert x.outputs[0].finish_reason == y.outputs[0].finish_reason
            for px, py in zip(x.outputs[0].logprobs, y.outputs[0].logprobs, strict=True):
                assert px.keys() == py.keys()
                for t in px:
                    assert px[t].logprob == pytest.approx(py[t].logprob, abs=1e-5)
    assert spec.engine.get_stats().prefix_cache_hits_total > hits


def test_seeded_sampling_and_n_are_the_same_tokens(plain, drafts):
    """Greedy proposals are point masses: a seeded request's draws are those of plain decoding."""
    prompts = _prompts(4, seed=13)
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=24, ignore_eos=True, seed=99, n=3,
                            repetition_penalty=1.1)
    want = _run(plain, prompts, params)
    assert _run(drafts["other"], prompts, params) == want
    assert _run(drafts["self-1"], prompts[1:2] * 3 + prompts, params)[3:] == want


def test_preemption(tiny_llama_dir):
    prompts = _prompts(12, seed=5)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    small = dict(dtype="float32", num_kv_blocks=24, block_size=8, show_progress=False)
    plain = LLM(tiny_llama_dir, **small)
    spec = LLM(tiny_llama_dir, **small, speculative_config=_draft(draft_num_layers=2))
    assert _run(spec, prompts, params) == _run(plain, prompts, params)
    stats = spec.engine.get_stats()
    assert stats.num_preemptions_total > 0 and stats.spec.num_accepted_tokens > 0
    spec.engine.check_integrity()


def test_external_draft_cut_to_layers(tiny_llama_dir, plain, other_draft_dir):
    spec = _llm(tiny_llama_dir, speculative_config=_draft(model=other_draft_dir, draft_num_layers=1))
    assert len(spec.engine.runner.drafter.kv_caches) == 1
    prompts = _prompts(5, seed=3)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    assert _run(spec, prompts, params) == _run(plain, prompts, params)


@pytest.mark.parametrize("options, match", [
    ({"draft_num_layers": 3}, "draft_num_layers must be between 1 and the model's 2 layers"),
    ({"model": "/nonexistent/draft"}, "speculative_config.model"),
    ({"model": "TARGET"}, "speculative_config.model is the target model itself"),
    ({"model": "OTHER_VOCAB"}, "speculative_config.model .* vocabulary of 512 tokens"),
])
def test_bad_drafts_refused_at_start(tiny_llama_dir, tiny_model_factory, options, match):
    options = {k: {"TARGET": tiny_llama_dir, "OTHER_VOCAB": tiny_model_factory(vocab_size=512)}.get(v, v)
               for k, v in options.items()}
    with pytest.raises(ValueError, match=match):
        _llm(tiny_llama_dir, speculative_config=_draft(**options))


@pytest.mark.parametrize("layout, match", [({"tensor_parallel_size": 2}, "tensor / pipeline"),
                                            ({"pipeline_parallel_size": 2}, "tensor / pipeline"),
                                            ({"enable_lora": True}, "enable_lora")])
def test_unsupported_layouts_refused_at_start(tiny_llama_dir, layout, match):
    with pytest.raises(ValueError, match=match):
        _llm(tiny_llama_dir, speculative_config=_draft(draft_num_layers=1), **layout)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), num_blocks=st.integers(24, 48), chunk=st.sampled_from([8, 32, 512]))
def test_kv_integrity_every_step(tiny_llama_dir, seed, num_blocks, chunk):
    """A random workload (arrivals, aborts, mixed params, chunked prefills) on a small pool: after
    every step no block is leaked or freed twice; every request ends."""
    llm = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=num_blocks, block_size=4, max_num_batched_tokens=chunk,
              show_progress=False, speculative_config=_draft(draft_num_layers=1))
    run_random_workload(llm.engine, [p[:20] for p in _prompts(10, seed)], seed)
    assert llm.engine.get_stats().spec.num_drafts > 0
