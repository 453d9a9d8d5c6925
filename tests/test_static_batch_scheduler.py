"""The static-batching scheduler's contract: a batch's finished requests come back as dummy rows
(one token at position 0 of the scratch block, ignored by ``update``), within the step's budget,
and its finished outputs are held until the batch ends."""

from __future__ import annotations

from test_scheduler import make_request

from pagoda.config import SchedulerConfig
from pagoda.engine.scheduler_interface import SchedulerInterface
from pagoda.engine.schedulers import make_scheduler
from pagoda.engine.static_batch_scheduler import PADDING_REQUEST_ID, StaticBatchScheduler
from pagoda.kv_cache.kv_cache_manager import KVCacheManager
from pagoda.outputs import CompletionOutput, RequestOutput


def test_padding_rows_are_dummy_scheduled_rows():
    kv = KVCacheManager(num_blocks=32, block_size=4)
    sched = make_scheduler(SchedulerConfig(64, 3, 128, "static"), kv)
    assert isinstance(sched, StaticBatchScheduler) and isinstance(sched, SchedulerInterface)
    lengths = {"r0": 2, "r1": 4, "r2": 7}
    for i, n in enumerate(lengths.values()):
        sched.add_request(make_request(i, 5, n))
    finished: set[str] = set()
    while sched.has_unfinished_requests():
        out = sched.schedule()
        padding = [s for s in out.scheduled if s.request.request_id == PADDING_REQUEST_ID]
        real = [s for s in out.scheduled if s.request.request_id != PADDING_REQUEST_ID]
        assert len(padding) == len(finished)  # one row per finished request of the batch
        assert {s.request.request_id for s in real} == set(lengths) - finished
        assert out.scheduled[:len(padding)] == padding  # leading rows
        for row in padding:
            assert (row.start, row.num_new_tokens, row.block_table) == (0, 1, [kv.scratch_block])
            assert row.sample  # a padded batch runs the LM head on it too
        assert kv.scratch_block == 32 and kv.scratch_block not in {b for t in kv.block_tables.values() for b in t}
        assert out.total_num_scheduled_tokens <= 64
        progressed = sched.update(out, {s.request.request_id: 9 for s in out.scheduled if s.sample})
        assert all(r.request_id != PADDING_REQUEST_ID for r in progressed)
        finished |= {r.request_id for r in progressed if r.status.finished}
        kv.check_integrity()
    assert finished == set(lengths) and kv.num_free_blocks == 32


def test_padding_stays_within_a_tight_budget():
    kv = KVCacheManager(num_blocks=32, block_size=4)
    sched = StaticBatchScheduler(SchedulerConfig(3, 4, 128, "static"), kv)
    for i, n in enumerate([1, 1, 1, 6]):
        sched.add_request(make_request(i, 1, n))
    while sched.has_unfinished_requests():
        out = sched.schedule()
        assert out.total_num_scheduled_tokens <= 3
        assert any(s.request.request_id != PADDING_REQUEST_ID for s in out.scheduled)  # real work every step
        sched.update(out, {s.request.request_id: 9 for s in out.scheduled if s.sample})


def _output(request_id: str, finished: bool) -> RequestOutput:
    completion = CompletionOutput(0, "", [], finish_reason="length" if finished else None)
    return RequestOutput(request_id, None, [1], [completion], finished)


def test_finished_outputs_wait_for_the_batch():
    kv = KVCacheManager(num_blocks=32, block_size=4)
    sched = StaticBatchScheduler(SchedulerConfig(64, 2, 128, "static"), kv)
    short, long = make_request(0, 3, 1), make_request(1, 3, 3)
    sched.add_request(short)
    sched.add_request(long)
    out = sched.schedule()
    sched.update(out, {"r0": 9, "r1": 9})  # r0 is done, r1 runs on
    assert short.status.finished and not long.status.finished
    assert [o.request_id for o in sched.release([_output("r0", True), _output("r1", False)])] == ["r1"]
    assert sched.has_unfinished_requests()
    while sched.running:
        out = sched.schedule()
        sched.update(out, {s.request.request_id: 9 for s in out.scheduled if s.sample})
    assert [o.request_id for o in sched.release([_output("r1", True)])] == ["r0", "r1"]  # in finishing order
    assert not sched.has_unfinished_requests()
