"""KV exhaustion: requests are preempted and resumed, a request preempted past the bound waits until its
whole run fits, every output is unchanged, and a request that can never fit the pool is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pagoda.config import SchedulerConfig
from pagoda.engine.scheduler import Scheduler
from pagoda.kv_cache.kv_cache_manager import KVCacheManager

sys.path.insert(0, str(Path(__file__).parent.parent))
from test_scheduler import make_request, next_token, reference_output, run_step  # noqa: E402


def no_eos_request(i: int, prompt_len: int = 8, max_tokens: int = 60):
    r = make_request(i, prompt_len, max_tokens)
    r.stop_token_ids = frozenset()  # every request runs to max_tokens: the pool is sure to run out
    return r


def run_workload(max_preemptions: int, num_requests: int = 10) -> tuple[Scheduler, dict[str, list[int]], int]:
    kv = KVCacheManager(num_blocks=24, block_size=4)  # 96 tokens; each request grows to 68
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8, max_model_len=128,
                                      max_preemptions=max_preemptions), kv)
    requests = [no_eos_request(i) for i in range(num_requests)]
    for r in requests:
        sched.add_request(r)
    steps = 0
    while sched.has_unfinished_requests():
        run_step(sched)
        kv.check_integrity()
        steps += 1
        assert steps < 5000, "no progress: thrash or a hang"
    assert kv.num_free_blocks == 24
    return sched, {r.request_id: r.output_token_ids for r in requests}, steps


@pytest.mark.parametrize("bound", [0, 1, 2])
def test_a_request_preempted_past_the_bound_waits_for_room_and_outputs_are_unchanged(bound):
    sched, outputs, _ = run_workload(bound)
    unbounded, _, _ = run_workload(10_000)
    for i in range(10):
        r = no_eos_request(i)
        assert outputs[r.request_id] == reference_output_no_eos(r.prompt_token_ids, 60)
    # the same deterministic workload: 11 / 17 / 21 preemptions at bounds 0 / 1 / 2, 24 unbounded
    assert 0 < sched.counters.num_preemptions < unbounded.counters.num_preemptions


def reference_output_no_eos(prompt: list[int], max_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(next_token(tokens))
    return tokens[len(prompt):]


def test_held_back_request_is_admitted_when_nothing_else_runs():
    kv = KVCacheManager(num_blocks=4, block_size=4)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=8, max_model_len=128,
                                      max_preemptions=0), kv)
    r = make_request(0, 4, 12)
    r.metrics.num_preemptions = 5  # far past the bound, but alone: it must run
    sched.add_request(r)
    while sched.has_unfinished_requests():
        run_step(sched)
    assert r.status.finished and r.output_token_ids == reference_output(r.prompt_token_ids, 12)


def test_preemptions_are_logged_per_request(caplog):
    with caplog.at_level("INFO", logger="pagoda.engine.scheduler"):
        sched, _, _ = run_workload(2)
    lines = [m for m in caplog.messages if m.startswith("preempted ")]
    assert len(lines) == sched.counters.num_preemptions > 0
