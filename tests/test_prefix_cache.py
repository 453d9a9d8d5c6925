"""Radix-tree prefix caching, copy-on-write forks and scheduling policies."""

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import assert_all_blocks_returned, assert_greedy_matches
from test_scheduler import make_request, next_token, reference_output
from transformers import AutoModelForCausalLM

from pagoda import LLM, SamplingParams
from pagoda.config import SchedulerConfig
from pagoda.engine.request import RequestStatus
from pagoda.engine.scheduler import Scheduler
from pagoda.kv_cache.kv_cache_manager import KVCacheManager


def test_match_insert_and_lru_eviction_of_unused_leaves():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    a = list(range(100, 112))  # 3 blocks
    kv.allocate("a", 12)
    kv.cache_blocks("a", a, 12)
    assert [n.block for n in kv.match_prefix(a + [1])] == kv.get_block_table("a")
    assert len(kv.match_prefix(a)) == 2  # always leave one token to compute
    assert kv.match_prefix([100, 101, 102, 999, 1]) == []
    assert kv.match_prefix(a + [1], salt="tenant-b") == []  # salted trees are separate
    kv.free("a")
    kv.check_integrity()
    assert kv.num_free_blocks == 5 and kv.usage == 0.0  # cached, evictable
    # b shares a's first two blocks and holds them
    prefix = kv.match_prefix(a[:8] + [7, 7, 7, 7, 1])
    assert len(prefix) == 2
    kv.allocate("b", 13, 8, prefix)
    kv.record_query(13, prefix)
    assert kv.counters.hit_tokens == 8 and kv.counters.queried_tokens == 13
    kv.check_integrity()
    # pressure: 3 free + 1 evictable (a's third block) — in-use blocks are never evicted
    assert kv.allocate("c", 16) is not None
    assert kv.cache.num_evictions == 1
    assert kv.allocate("d", 4) is None
    for rid in ("b", "c"):
        kv.free(rid)
    kv.check_integrity()
    snap = kv.snapshot()
    assert len(snap.free) + len(snap.used) == 8 and all(u.cached for u in snap.used)


def test_copy_on_write_of_a_shared_partial_block():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    kv.allocate("p", 6)  # blocks [x, y], y half full
    kv.fork("p", "c", 6)
    shared = kv.get_block_table("p")[1]
    assert kv.pool.ref_counts[shared] == 2
    kv.allocate("c", 6, 5)  # the child rewrites position 5: its own copy of y
    assert kv.take_block_copies() == [(shared, kv.get_block_table("c")[1])]
    assert kv.get_block_table("c")[0] == kv.get_block_table("p")[0]
    kv.allocate("p", 7, 6)  # the parent is now alone on y: no copy
    assert kv.take_block_copies() == []
    kv.check_integrity()


@settings(max_examples=40, deadline=None)
@given(groups=st.integers(1, 3), per_group=st.integers(1, 5), prefix_len=st.integers(1, 30),
       num_blocks=st.integers(10, 30), policy=st.sampled_from(["fcfs", "priority", "lpm"]), seed=st.integers(0, 99))
def test_random_shared_prefix_workloads_under_pressure(groups, per_group, prefix_len, num_blocks, policy, seed):
    rng = random.Random(seed)
    bs = 4
    kv = KVCacheManager(num_blocks, bs, enable_prefix_caching=True)
    sched = Scheduler(SchedulerConfig(32, 4, num_blocks * bs, scheduling_policy=policy, max_wait_s=0.05), kv)
    reqs = []
    for _ in range(groups):
        system = [rng.randrange(1, 49) for _ in range(prefix_len)]
        for _ in range(per_group):
            r = make_request(len(reqs), 1, rng.randint(1, 12))
            r.prompt_token_ids = system + [rng.randrange(1, 49) for _ in range(rng.randint(1, 8))]
            r.prompt_token_ids = r.prompt_token_ids[: num_blocks * bs - 1]
            r.all_token_ids = list(r.prompt_token_ids)
            r.priority = rng.randint(0, 2)
            reqs.append(r)
            sched.add_request(r)
    steps = 0
    while sched.has_unfinished_requests():
        out = sched.schedule()
        sampled = {s.request.request_id: next_token(s.request.all_token_ids) for s in out.scheduled if s.sample}
        for s in out.scheduled:  # cached tokens are never recomputed by the step itself
            assert s.start == s.request.num_computed_tokens
        sched.update(out, sampled)
        kv.check_integrity()
        steps += 1
        assert steps < 3000
    for r in reqs:
        assert r.status is not RequestStatus.FINISHED_ABORTED
        cap = min(r.max_tokens, num_blocks * bs - r.num_prompt_tokens)
        assert r.output_token_ids == reference_output(r.prompt_token_ids, cap)
    assert not kv.block_tables


def test_priority_policy_runs_lower_values_first_and_starvation_guard():
    kv = KVCacheManager(64, 4)
    sched = Scheduler(SchedulerConfig(64, 1, 256, scheduling_policy="priority", max_wait_s=0.2), kv)
    old = make_request(0, 4, 1)
    old.priority = 5
    old.metrics.arrival_time -= 1.0  # waited past the bound
    urgent, normal = make_request(1, 4, 1), make_request(2, 4, 1)
    urgent.priority, normal.priority = 0, 3
    for r in (normal, old, urgent):
        sched.add_request(r)
    order = []
    while sched.has_unfinished_requests():
        out = sched.schedule()
        order += [s.request.request_id for s in out.scheduled]
        sched.update(out, {s.request.request_id: 9 for s in out.scheduled if s.sample})
    assert order == ["r0", "r1", "r2"]  # the starving one, then by priority


def test_lpm_admits_longest_cached_prefix_first():
    kv = KVCacheManager(64, 4, enable_prefix_caching=True)
    sched = Scheduler(SchedulerConfig(256, 1, 256, scheduling_policy="lpm", max_wait_s=60), kv)
    warm = make_request(0, 16, 1)
    sched.add_request(warm)
    while sched.has_unfinished_requests():
        out = sched.schedule()
        sched.update(out, {s.request.request_id: 9 for s in out.scheduled if s.sample})
    cold, hot = make_request(1, 16, 1), make_request(2, 1, 1)
    hot.prompt_token_ids = warm.prompt_token_ids + [3, 4]
    hot.all_token_ids = list(hot.prompt_token_ids)
    sched.add_request(cold)
    sched.add_request(hot)
    out = sched.schedule()
    assert [s.request.request_id for s in out.scheduled] == ["r2"] and out.scheduled[0].start == 16


@pytest.fixture(scope="module")
def reference(tiny_llama_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


def test_cache_on_and_off_give_the_same_greedy_outputs_under_pressure(tiny_llama_dir, reference):
    rng = random.Random(0)
    prompts = []
    for _ in range(4):
        system = [rng.randrange(3, 384) for _ in range(rng.randint(20, 70))]
        prompts += [system + [rng.randrange(3, 384) for _ in range(rng.randint(1, 20))] for _ in range(4)]
    rng.shuffle(prompts)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    results = {}
    for on in (False, True):
        llm = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=20, max_num_batched_tokens=48, max_num_seqs=6,
                  enable_prefix_caching=on, show_progress=False)
        engine = llm.engine
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, params)
        outs = {}
        while engine.has_unfinished_requests():
            for o in engine.step():
                if o.finished:
                    outs[o.request_id] = o
            engine.check_integrity()  # after every step
        results[on] = [outs[str(i)].outputs[0].token_ids for i in range(len(prompts))]
        stats = engine.get_stats()
        if on:
            assert stats.prefix_cache_hits_total > 0 and stats.prefix_cache_evictions_total > 0
            assert sum(outs[str(i)].num_cached_tokens for i in range(len(prompts))) > 0
        assert stats.num_preemptions_total > 0
        assert_all_blocks_returned(engine)
    for p, a, b in zip(prompts, results[False], results[True], strict=True):
        if a != b:  # only reference ties may separate them
            assert_greedy_matches(reference, p, a)
            assert_greedy_matches(reference, p, b)


def test_n_samples_share_the_prompt_blocks(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=64, show_progress=False)
    prompt = list(range(10, 50))  # 40 tokens: 2 full blocks and a partial one
    one = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    engine = llm.engine
    engine.add_request("fork", prompt, SamplingParams(n=3, temperature=0, max_tokens=8, ignore_eos=True))
    engine.step()  # prefill of the first sample; the others fork from it
    tables = [engine.kv_cache.get_block_table(f"{i}_fork") for i in range(3)]
    assert tables[0][:2] == tables[1][:2] == tables[2][:2]
    assert all(engine.kv_cache.pool.ref_counts[b] >= 3 for b in tables[0][:2])
    outs = []
    while engine.has_unfinished_requests():
        outs += [o for o in engine.step() if o.finished]
    assert [c.token_ids for c in outs[0].outputs] == [one.outputs[0].token_ids] * 3
    assert_all_blocks_returned(engine)


def max_blocks_held(engine, request_ids: list[str]) -> int:
    """Steps the engine to the end; the largest number of distinct blocks the requests held at once."""
    peak = 0
    while engine.has_unfinished_requests():
        engine.step()
        held = {b for rid in request_ids for b in engine.kv_cache.get_block_table(rid)}
        peak = max(peak, len(held))
    return peak


def test_n8_samples_of_a_long_prompt_share_its_blocks(tiny_model_factory):
    path = tiny_model_factory(max_positions=2048)
    llm = LLM(path, dtype="float32", num_kv_blocks=400, show_progress=False)
    prompt = [(7 * i) % 380 + 3 for i in range(1000)]
    t = 40
    params = SamplingParams(n=8, temperature=1.0, seed=0, max_tokens=t, ignore_eos=True)
    llm.engine.add_request("n8", prompt, params)
    forked = max_blocks_held(llm.engine, [f"{i}_n8" for i in range(8)])
    bound = -(-1000 // 16) + 8 * (-(-t // 16) + 1)
    independent = LLM(path, dtype="float32", num_kv_blocks=800, enable_prefix_caching=False, show_progress=False)
    for i in range(8):
        independent.engine.add_request(f"r{i}", prompt, SamplingParams(temperature=1.0, seed=i, max_tokens=t,
                                                                       ignore_eos=True))
    alone = max_blocks_held(independent.engine, [f"r{i}" for i in range(8)])
    print(f"n=8 forked: {forked} blocks (bound {bound}); 8 independent requests: {alone}")
    assert forked <= bound < alone, (forked, bound, alone)
    assert_all_blocks_returned(llm.engine)


def test_prompt_logprobs_are_complete_on_a_prefix_hit(tiny_llama_dir):
    llm = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=64, show_progress=False)
    prompt = list(range(20, 73))
    llm.generate([prompt], SamplingParams(max_tokens=2, temperature=0))  # caches the prompt's blocks
    out = llm.generate([prompt], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0))[0]
    assert len(out.prompt_logprobs) == len(prompt) and all(e is not None for e in out.prompt_logprobs[1:])
    again = llm.generate([prompt], SamplingParams(max_tokens=1, temperature=0))[0]
    assert again.num_cached_tokens > 0  # the cache still serves requests that don't ask for them
