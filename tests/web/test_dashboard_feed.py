"""The dashboard's data, without a browser: the compact block map against the KV cache manager's own
snapshot, the step timeline against the scheduler's counters, the feed's gating and latency samples."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from pagoda.engine.args import EngineArgs
from pagoda.engine.engine_factory import build_engine
from pagoda.engine.llm_engine import LLMEngine
from pagoda.engine.request import Request
from pagoda.engine.scheduler_output import ScheduledRequest, SchedulerOutput
from pagoda.engine.step_timeline import StepTimeline, count_step_tokens
from pagoda.kv_cache.block_map import EVICTABLE, FREE, OWNED, OWNED_CACHED, compact_block_map
from pagoda.kv_cache.kv_cache_manager import KVCacheManager
from pagoda.outputs import RequestMetrics
from pagoda.sampling_params import SamplingParams
from pagoda.server.dashboard_feed import DashboardFeed
from pagoda.server.dashboard_hub import percentiles


def _expected_state(info) -> str:
    if not info.cached:
        return OWNED
    return EVICTABLE if info.ref_count == 1 else OWNED_CACHED


def _check_against_reference(kv: KVCacheManager) -> None:
    ref = kv.snapshot()
    got = compact_block_map(kv)
    assert (got.num_blocks, got.block_size) == (ref.num_blocks, ref.block_size)
    for b in ref.free:
        assert got.state[b] == FREE and got.owner[b] == -1
    for info in ref.used:
        assert got.state[info.block] == _expected_state(info), info
        if info.requests:
            assert got.owners[got.owner[info.block]] in info.requests
        else:
            assert got.owner[info.block] == -1


@pytest.mark.parametrize("seed", range(6))
def test_compact_block_map_matches_the_managers_snapshot(seed: int) -> None:
    rng = random.Random(seed)
    bs = 4
    kv = KVCacheManager(num_blocks=48, block_size=bs, enable_prefix_caching=True)
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(4, 20))] for _ in range(3)]
    live: dict[str, list[int]] = {}
    for i in range(400):
        op = rng.random()
        if op < 0.35 or not live:  # a new request, reusing any cached prefix
            tokens = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(1, 12))]
            prefix = kv.match_prefix(tokens)
            rid = f"r{i}"
            if kv.allocate(rid, len(tokens), len(prefix) * bs, prefix) is not None:
                kv.cache_blocks(rid, tokens, len(tokens))
                live[rid] = tokens
        elif op < 0.65:  # decode a few tokens
            rid = rng.choice(list(live))
            tokens = live[rid]
            new = tokens + [rng.randrange(50) for _ in range(rng.randrange(1, 6))]
            if kv.allocate(rid, len(new), len(tokens)) is not None:
                kv.cache_blocks(rid, new, len(new))
                live[rid] = new
        elif op < 0.75:  # a second sample shares the blocks
            parent = rng.choice(list(live))
            kv.fork(parent, f"f{i}")
            live[f"f{i}"] = list(live[parent])
        else:
            rid = rng.choice(list(live))
            kv.free(rid)
            del live[rid]
        kv.check_integrity()
        _check_against_reference(kv)
    assert kv.cache is not None and kv.cache.num_evictions > 0, "the workload never evicted"


def _request(prompt_len: int, computed: int, outputs: int) -> Request:
    r = Request("r", list(range(prompt_len)), SamplingParams(), 100, frozenset(), RequestMetrics(0.0))
    for t in range(outputs):
        r.append_output_token(t)
    r.num_computed_tokens = computed
    return r


def test_step_tokens_split_into_prefill_decode_and_jump_forward() -> None:
    chunk = _request(40, 0, 0)  # a prefill chunk
    resumed = _request(10, 0, 5)  # preempted after 5 outputs: recomputes prompt and outputs
    decode = _request(10, 14, 5)  # one decode token
    forced = _request(10, 12, 5)  # the sampled token plus 2 grammar-forced ones
    out = SchedulerOutput(scheduled=[ScheduledRequest(chunk, 0, 16, []), ScheduledRequest(resumed, 0, 15, []),
                                     ScheduledRequest(decode, 14, 1, []), ScheduledRequest(forced, 12, 3, [])],
                          preempted_request_ids=["x"])
    assert count_step_tokens(out) == (31, 2, 2)
    timeline = StepTimeline(length=3)
    for i in range(5):
        rec = timeline.record(out, end_time=float(i), duration_s=0.01)
    assert (rec.index, rec.batch_size, rec.num_preempted, rec.num_tokens) == (4, 4, 1, 35)
    assert [r.index for r in timeline.since(-1)] == [2, 3, 4]  # the oldest fell out
    assert [r.index for r in timeline.since(3)] == [4] and timeline.since(4) == []


@pytest.fixture(scope="module")
def engine(tiny_llama_dir: str) -> LLMEngine:
    return build_engine(EngineArgs(model=tiny_llama_dir, dtype="float32", num_kv_blocks=64,
                                                 max_num_seqs=4, max_num_batched_tokens=64, show_progress=False))


def _run(engine: LLMEngine, feed: DashboardFeed) -> int:
    outputs = 0
    while engine.has_unfinished_requests():
        start = time.monotonic()
        out = engine.step()
        feed.on_step(start, out)
        outputs += sum(1 for o in out if o.outputs[0].token_ids)
    return outputs


def test_feed_records_only_while_watched_and_agrees_with_the_counters(engine: LLMEngine) -> None:
    feed = DashboardFeed(engine, watch_timeout_s=600.0)  # one look keeps it open for the whole test
    engine.add_request("closed", list(range(3, 30)), SamplingParams(max_tokens=5, ignore_eos=True))
    _run(engine, feed)
    assert feed.timeline.last_index == -1 and not feed.ttft and not feed.itl  # nobody watched

    snap = feed.snapshot(-1, 0.0)  # the dashboard opens
    assert snap.steps == [] and snap.block_map is not None and snap.cost_s > 0
    before = engine.get_stats()
    prompts = [list(range(5, 5 + n)) for n in (70, 20, 33, 9, 50, 12)]  # more than max_num_seqs, chunked
    for i, p in enumerate(prompts):
        engine.add_request(f"w{i}", p, SamplingParams(max_tokens=8, ignore_eos=True))
    mid = feed.snapshot(-1, 0.0)
    assert (mid.num_running, mid.num_waiting) == (0, len(prompts))
    assert len(mid.queue) == len(prompts) and {q.status for q in mid.queue} == {"waiting"}
    assert [q.num_prompt_tokens for q in mid.queue] == [len(p) for p in prompts]
    outputs = _run(engine, feed)
    after = engine.get_stats()
    snap = feed.snapshot(-1, 0.0)

    steps = snap.steps
    assert len(steps) == after.num_steps - before.num_steps
    assert sum(s.prefill_tokens for s in steps) == after.prompt_tokens_total - before.prompt_tokens_total
    generated = after.generation_tokens_total - before.generation_tokens_total
    assert sum(s.decode_tokens for s in steps) == generated - len(prompts)  # first tokens come from prefills
    assert all(1 <= s.batch_size <= 4 and s.duration_s > 0 for s in steps)
    assert [s.index for s in steps] == list(range(len(steps)))
    assert len(snap.ttft_s) == len(prompts) and all(v > 0 for _, v in snap.ttft_s)
    assert len(snap.itl_s) == outputs - len(prompts)
    assert snap.step_s_total == pytest.approx(sum(s.duration_s for s in steps))
    assert 0 < snap.feed_s_total < snap.step_s_total
    assert snap.block_map.count(OWNED) + snap.block_map.count(OWNED_CACHED) == 0  # all finished
    assert feed.snapshot(steps[-1].index, snap.taken_at).steps == []  # the reader's cursor


def test_percentiles_are_nearest_rank() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100, 1001):
        values = rng.exponential(size=n).tolist()
        got = percentiles(values)
        for q in (50, 90, 99):
            assert got[f"p{q}"] == np.percentile(values, q, method="inverted_cdf")
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None}
