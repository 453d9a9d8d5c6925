"""Speculative decoding inside the engine, on tiny random fp32 models: the same tokens (and
logprobs) as decoding one token at a time, whatever the batch, with prefix hits, preemption,
n > 1, stop strings and stop tokens; seeded sampling gives the same tokens too; the KV pool stays
consistent after every step of a random workload."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_workload import run_random_workload

from pagoda import LLM, SamplingParams

# adaptive off and 1-grams allowed: proposals on nearly every step, so verification is exercised hard
EAGER = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3,
         "adaptive": False}


def _prompts(n: int, seed: int, vocab: int = 384) -> list[list[int]]:
    """Repetitive token prompts (a random motif repeated with noise), so that n-grams match."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        motif = [rng.randrange(3, vocab) for _ in range(rng.randint(2, 6))]
        seq = (motif * 8)[: rng.randint(6, 40)]
        out.append([t if rng.random() > 0.1 else rng.randrange(3, vocab) for t in seq])
    return out


def _run(llm: LLM, prompts, params) -> list[list[list[int]]]:
    return [[list(c.token_ids) for c in o.outputs] for o in llm.generate(prompts, params, use_tqdm=False)]


@pytest.fixture(scope="module")
def plain(tiny_llama_dir):
    return LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=256, show_progress=False)


@pytest.fixture(scope="module")
def spec(tiny_llama_dir):
    return LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=256, show_progress=False, speculative_config=EAGER)


@pytest.mark.parametrize("batch", [1, 8, 32])
def test_greedy_equal_across_batch_sizes(plain, spec, batch):
    prompts = _prompts(batch, seed=batch)
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    before = spec.engine.get_stats().spec.num_accepted_tokens
    assert _run(spec, prompts, params) == _run(plain, prompts, params)
    stats = spec.engine.get_stats().spec
    assert stats.num_accepted_tokens > before  # speculation really happened and paid some
    spec.engine.check_integrity()


def test_greedy_equal_with_prefix_hits_and_eos(plain, spec):
    prompts = _prompts(6, seed=7)
    params = SamplingParams(temperature=0, max_tokens=40)
    want = _run(plain, prompts, params)
    assert _run(spec, prompts, params) == want
    hits = spec.engine.get_stats().prefix_cache_hits_total
    assert _run(spec, prompts, params) == want  # warm: prompts from the prefix cache
    assert spec.engine.get_stats().prefix_cache_hits_total > hits


def test_logprobs_equal(plain, spec):
    prompts = _prompts(4, seed=11)
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, logprobs=3)
    a = plain.generate(prompts, params, use_tqdm=False)
    b = spec.generate(prompts, params, use_tqdm=False)
    for x, y in zip(a, b, strict=True):
        assert list(x.outputs[0].token_ids) == list(y.outputs[0].token_ids)
        assert len(y.outputs[0].logprobs) == len(y.outputs[0].token_ids)
        for px, py in zip(x.outputs[0].logprobs, y.outputs[0].logprobs, strict=True):
            assert px.keys() == py.keys()
            for t in px:
                assert px[t].logprob == pytest.approx(py[t].logprob, abs=1e-5)
                assert px[t].rank == py[t].rank
        assert x.outputs[0].cumulative_logprob == pytest.approx(y.outputs[0].cumulative_logprob, abs=1e-4)


def test_stop_strings_and_stop_tokens(plain, spec, tiny_llama_dir):
    prompts = _prompts(8, seed=3)
    free = _run(plain, prompts, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    # a stop token id that plain decoding meets mid-way, and a stop string taken from the plain text
    stop_id = free[0][0][len(free[0][0]) // 2]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop_token_ids=[stop_id])
    assert _run(spec, prompts, params) == _run(plain, prompts, params)
    text = plain.generate(prompts[1:2], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
                          use_tqdm=False)[0].outputs[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop], logprobs=1)
    a = plain.generate(prompts, params, use_tqdm=False)
    b = spec.generate(prompts, params, use_tqdm=False)
    for x, y in zip(a, b, strict=True):
        assert (x.outputs[0].text, list(x.outputs[0].token_ids)) == (y.outputs[0].text, list(y.outputs[0].token_ids))
        assert x.outputs[0].finish_reason == y.outputs[0].finish_reason
        assert len(y.outputs[0].logprobs) == len(y.outputs[0].token_ids)


def test_preemption(tiny_llama_dir):
    """A pool too small for the batch: requests are preempted and recomputed, with the same tokens."""
    prompts = _prompts(12, seed=5)
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    small = dict(dtype="float32", num_kv_blocks=24, block_size=8, show_progress=False)
    plain = LLM(tiny_llama_dir, **small)
    spec = LLM(tiny_llama_dir, **small, speculative_config=EAGER)
    assert _run(spec, prompts, params) == _run(plain, prompts, params)
    stats = spec.engine.get_stats()
    assert stats.num_preemptions_total > 0 and stats.spec.num_accepted_tokens > 0
    spec.engine.check_integrity()


def test_n_and_seeded_sampling_are_the_same_tokens(plain, spec):
    """The README's promise: a seeded request gives the same tokens with or without speculation
    (its draw for output position i depends only on (seed, i)), so n > 1 with seeds too."""
    prompts = _prompts(5, seed=13)
    params = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, max_tokens=32, ignore_eos=True, seed=1234, n=3,
                            repetition_penalty=1.1, presence_penalty=0.2, logit_bias={5: 2.0})
    want = _run(plain, prompts, params)
    assert _run(spec, prompts, params) == want
    assert _run(spec, prompts[2:3] * 4 + prompts, params)[4:] == want  # another batch around it


def test_min_tokens_and_max_tokens_bounds(plain, spec):
    prompts = _prompts(6, seed=17)
    for max_tokens in (1, 2, 5):
        params = SamplingParams(temperature=0, max_tokens=max_tokens, min_tokens=min(2, max_tokens))
        assert _run(spec, prompts, params) == _run(plain, prompts, params)


def test_constrained_and_pooling_requests_are_not_speculated(spec):
    from pagoda.spec.speculator import can_speculate

    assert not can_speculate(_request(SamplingParams(logits_processors=[lambda ids, row: row])))
    assert can_speculate(_request(SamplingParams()))


def _request(params: SamplingParams):
    from pagoda.engine.request import Request
    from pagoda.outputs import RequestMetrics

    return Request("r", [1, 2, 3], params, 8, frozenset(), RequestMetrics(arrival_time=0.0))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# pools of 24+ blocks: below that, forks waiting with their blocks can starve a preempted request even
# without speculation (a livelock of the plain scheduler, seen at 10 blocks; not speculation's to fix)
@given(seed=st.integers(0, 10_000), num_blocks=st.integers(24, 48), chunk=st.sampled_from([8, 32, 512]))
def test_kv_integrity_every_step(tiny_llama_dir, seed, num_blocks, chunk):
    """A random workload (arrivals, aborts, mixed params) on a small pool: after every step no block
    is leaked or freed twice, and a rejected proposal's blocks are back in the pool."""
    llm = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=num_blocks, block_size=4, max_num_batched_tokens=chunk,
              show_progress=False, speculative_config=EAGER)
    engine = llm.engine

    def bounded_tables(engine) -> None:  # no request holds blocks past its next step's needs + proposal
        for s in engine.scheduler.running:
            table = engine.kv_cache.get_block_table(s.request_id)
            assert len(table) <= -(-(s.num_tokens + EAGER["num_speculative_tokens"]) // 4)

    run_random_workload(engine, [p[:20] for p in _prompts(10, seed)], seed, bounded_tables)
    assert engine.kv_cache.pool.num_free_blocks + (engine.kv_cache.cache.evictable() if engine.kv_cache.cache
                                                   else 0) == num_blocks


ADAPTIVE = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3}


def test_adaptive_learns_decode_step_costs(plain, tiny_llama_dir):
    """The default policy times the engine's decode steps by their rows (never a prefill step) and
    keeps greedy outputs equal."""
    spec = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=256, show_progress=False, speculative_config=ADAPTIVE)
    prompts = _prompts(8, seed=21)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    assert _run(spec, prompts, params) == _run(plain, prompts, params)
    cost = spec.engine.scheduler.speculator.step_cost
    measured = [r for r in range(1, 8 * 5 + 1) if cost.measured(r) is not None]
    assert 8 in measured or 7 in measured  # plain decode steps of the batch (one may have finished)
    assert all(cost.measured(r) is None for r in range(8 * 5 + 1, 400))  # the prefill (>= 48 rows) is not
    spec.engine.check_integrity()


def test_plan_stops_where_a_known_step_cost_jumps(plain, tiny_llama_dir):
    """With a cost table that doubles at 5 rows (as the int4 kernel's does), a lone request proposes
    at most 3 tokens, whatever its acceptance; the tokens are those of plain decoding."""
    spec = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=256, show_progress=False, speculative_config=ADAPTIVE)
    cost = spec.engine.scheduler.speculator.step_cost
    for rows in range(1, 9):
        cost.record(rows, 0.010 if rows <= 4 else 0.020)
    cost.learn = False  # the real steps' times must not overwrite the synthetic table
    prompt = [7, 8, 9, 10] * 8
    params = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    assert _run(spec, [prompt], params) == _run(plain, [prompt], params)
    stats = spec.engine.get_stats().spec
    assert stats.num_accepted_tokens > 0 and len(stats.accepted_per_position) == 3
