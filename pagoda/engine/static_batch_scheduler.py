"""Static batching, the benchmark baseline: a batch is admitted together, nothing joins it until all
of it has finished, and its results come back together (as a padded batched ``generate``)."""

from __future__ import annotations

import time

from pagoda.config import SchedulerConfig
from pagoda.engine.request import Request
from pagoda.engine.scheduler import Scheduler
from pagoda.engine.scheduler_output import ScheduledRequest, SchedulerOutput
from pagoda.kv_cache.kv_cache_manager import KVCacheManager
from pagoda.outputs import RequestMetrics, RequestOutput
from pagoda.sampling_params import SamplingParams

PADDING_REQUEST_ID = "<padding>"  # never a user request id in the engine's books


class StaticBatchScheduler(Scheduler):
    """A padded batch computes its finished rows until its longest request ends: each step carries
    one dummy row per finished request of the batch (one token at position 0 of the KV cache's
    scratch block, sampled greedily and ignored), so the model runner needs no notion of padding.
    Finished outputs are held until the batch has nothing running."""

    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager) -> None:
        super().__init__(config, kv_cache)
        self._batch_size = 0  # the running batch's size at its largest
        self._held: list[RequestOutput] = []
        # a request the engine never sees: its status stays WAITING, so ``update`` skips its rows
        self._padding = Request(PADDING_REQUEST_ID, [0], SamplingParams(temperature=0.0), max_tokens=1,
                                stop_token_ids=frozenset(), metrics=RequestMetrics(arrival_time=0.0))

    def schedule(self) -> SchedulerOutput:
        if not self.running:
            for request in self._waiting_in_order():
                if len(self.running) >= self.config.max_num_seqs:
                    break
                if self._lora_slot_free(request):  # else it waits for a batch its adapter fits in
                    self.waiting.remove(request)
                    self._admit(request)
            self._batch_size = 0
        self._batch_size = max(self._batch_size, len(self.running))
        budget = self.config.max_num_batched_tokens
        num_padding = max(0, min(self._batch_size - len(self.running), budget - 1))  # rows count in the budget
        out = SchedulerOutput()
        self._schedule_running(budget - num_padding, out)
        if out.scheduled and num_padding:  # padding first, as the batch's leading rows
            row = ScheduledRequest(self._padding, 0, 1, [self.kv_cache.scratch_block])
            out.scheduled[:0] = [row] * num_padding
        return self._stamp(out)

    def _place_fork(self, child: Request) -> None:
        self._admit(child)  # part of its parent's batch

    def release(self, outputs: list[RequestOutput]) -> list[RequestOutput]:
        """``outputs`` less the finished ones, which are held; all held ones too once the batch has
        nothing running (their finished_time is then)."""
        self._held += [o for o in outputs if o.finished]
        outputs = [o for o in outputs if not o.finished]
        if self._held and not self.running:
            now = time.monotonic()
            for o in self._held:
                if o.metrics is not None:
                    o.metrics.finished_time = now
            outputs += self._held
            self._held = []
        return outputs

    def has_unfinished_requests(self) -> bool:
        return super().has_unfinished_requests() or bool(self._held)
