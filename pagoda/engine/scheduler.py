"""Iteration-level scheduler: every step decides how many new tokens each request gets.

Prefill, chunked prefill, decode, prefix-cache hits, forks and resumption after preemption are
one form: a request runs ``num_tokens - num_computed_tokens`` new tokens, cut to the step's
token budget.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from pagoda.config import SchedulerConfig
from pagoda.engine.policy import FCFSPolicy, LongestPrefixMatchPolicy, PriorityPolicy, SchedulingPolicy
from pagoda.engine.request import Request, RequestStatus
from pagoda.engine.scheduler_counters import SchedulerCounters
from pagoda.engine.scheduler_interface import SchedulerInterface
from pagoda.engine.scheduler_output import ScheduledRequest, SchedulerOutput
from pagoda.kv_cache.kv_cache_manager import KVCacheManager
from pagoda.logits_processor import processors_ready
from pagoda.spec.speculator import Proposal, Speculator

logger = logging.getLogger(__name__)


def make_policy(config: SchedulerConfig, kv_cache: KVCacheManager) -> SchedulingPolicy:
    if config.scheduling_policy == "fcfs":
        return FCFSPolicy(config.max_wait_s)
    if config.scheduling_policy == "priority":
        return PriorityPolicy(config.max_wait_s)
    if config.scheduling_policy == "lpm":
        return LongestPrefixMatchPolicy(
            config.max_wait_s, lambda r: len(kv_cache.match_prefix(r.all_token_ids, r.cache_salt)))
    raise ValueError(f"unknown scheduling policy {config.scheduling_policy!r}; choose fcfs, priority or lpm")


class Scheduler(SchedulerInterface):
    """Continuous batching. Running requests are served first, in the policy's order; when blocks
    run out the last of them is preempted (its blocks freed, recomputed later) until the earlier
    one fits. Waiting requests join, in the policy's order, while the token budget,
    ``max_num_seqs`` and free blocks allow. With a ``speculator``, a decoding request's step also
    runs the tokens it proposes (within the budget); the proposed tokens the model rejects give
    their KV slots back.
    """

    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager,
                 speculator: Speculator | None = None) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.speculator = speculator
        self.policy = make_policy(config, kv_cache)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.counters = SchedulerCounters()

    # -- queue management -------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_request(self, request_id: str, status: RequestStatus, stop_reason: int | str | None = None) -> None:
        """Ends a request (abort, stop string, error) and returns its blocks at once."""
        request = self.requests.get(request_id)
        if request is None:
            return
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self._finish(request, status, stop_reason)

    def _finish(self, request: Request, status: RequestStatus, stop_reason: int | str | None = None) -> None:
        request.status = status
        request.stop_reason = stop_reason
        request.metrics.finished_time = time.monotonic()
        for child in request.pending_forks:  # never forked: they end with their parent
            child.status = status
            child.metrics.finished_time = request.metrics.finished_time
        request.pending_forks = []
        self.kv_cache.free(request.request_id)
        self.requests.pop(request.request_id, None)
        if self.speculator is not None:
            self.speculator.forget(request.request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    # -- one step -----------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(self.config.max_num_batched_tokens, out)
        if not out.preempted_request_ids:
            self._schedule_waiting(budget, out)
        return self._stamp(out)

    def _schedule_running(self, budget: int, out: SchedulerOutput) -> int:
        """Schedules the running requests (preempting when blocks run out); returns the budget left."""
        self.running = self.policy.order_running(self.running)
        if self.speculator is not None:
            self._plan_proposals(budget)
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            scheduled = self._schedule_one(request, budget, out)
            while not scheduled and self._release_a_waiting_fork():
                scheduled = self._schedule_one(request, budget, out)
            if not scheduled:
                # out of blocks: preempt from the back until this one fits (or is itself preempted)
                while self.running[-1] is not request:
                    self._preempt(self.running.pop(), out)
                    if self._schedule_one(request, budget, out):
                        break
                else:
                    self._preempt(self.running.pop(), out)
                    break
            budget -= out.scheduled[-1].num_new_tokens
            i += 1
        return budget

    def _schedule_waiting(self, budget: int, out: SchedulerOutput) -> None:
        for request in self._waiting_in_order():
            if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
                break
            if not processors_ready(request.params.logits_processors):
                continue  # its grammar still compiles: it waits, the others go ahead
            if not self._lora_slot_free(request):
                continue  # its adapter would need a slot that running requests hold
            admitted = self._admit_one(request, budget, out)
            if admitted is None:
                continue  # its next blocks are being computed by another request: wait for them
            if not admitted:
                break  # head of line: keep the policy's order
            budget -= out.scheduled[-1].num_new_tokens

    def _lora_slot_free(self, request: Request) -> bool:
        lora, limit = request.lora_request, self.config.max_loras
        if lora is None:
            return True
        running = {r.lora_request.lora_int_id for r in self.running if r.lora_request is not None}
        return lora.lora_int_id in running or len(running) < limit

    def _stamp(self, out: SchedulerOutput) -> SchedulerOutput:
        """The step's block copies and its requests' first-scheduled times."""
        out.block_copies = self.kv_cache.take_block_copies()
        now = time.monotonic()
        for s in out.scheduled:
            if s.request.metrics.first_scheduled_time is None:
                s.request.metrics.first_scheduled_time = now
        return out

    def _waiting_in_order(self) -> list[Request]:
        if isinstance(self.policy, FCFSPolicy):
            return list(self.waiting)
        return self.policy.order(self.waiting)

    def _schedule_one(self, request: Request, budget: int, out: SchedulerOutput) -> bool:
        num_new = min(request.num_tokens - request.num_computed_tokens, budget)
        proposed = self._propose(request, num_new, budget, out)
        start = request.num_computed_tokens
        table = self.kv_cache.allocate(request.request_id, start + num_new + len(proposed), start)
        if table is None and proposed:  # no room for the proposal: decode plainly
            proposed = Proposal()
            table = self.kv_cache.allocate(request.request_id, start + num_new, start)
        if table is None:
            return False
        out.scheduled.append(ScheduledRequest(request, start, num_new + len(proposed), table, proposed.token_ids,
                                              proposed.num_draft_tokens))
        return True

    def _plan_proposals(self, budget: int) -> None:
        """The speculator chooses the step's proposals for all its decoding requests at once."""
        assert self.speculator is not None
        decoding = [r for r in self.running if r.num_computed_tokens + 1 == r.num_tokens]
        generated = sum(r.num_tokens - r.num_computed_tokens for r in self.running
                        if r.num_computed_tokens >= r.num_prompt_tokens)
        known = sum(r.num_tokens - r.num_computed_tokens for r in self.running)
        self.speculator.plan(decoding, [self._proposal_cap(r) for r in decoding], generated, budget - known)

    def _proposal_cap(self, request: Request) -> int:
        """The most tokens a request may propose so that every token the step may yield fits its
        max_tokens and the context length."""
        return min(request.max_tokens - request.num_output_tokens - 1,
                   self.config.max_model_len - request.num_tokens - 1)

    def _propose(self, request: Request, num_new: int, budget: int, out: SchedulerOutput) -> Proposal:
        """A decoding request's planned proposal, capped so that every token the step may yield fits
        the budget, the request's max_tokens and the context length, and the step keeps to the
        speculator's room for generated rows."""
        if self.speculator is None or num_new != 1 or request.num_computed_tokens + 1 != request.num_tokens:
            return Proposal()
        cap = min(budget - 1, self._proposal_cap(request))
        room = self.speculator.room(len(self.running), out.scheduled)
        if room is not None:
            cap = min(cap, room)
        return self.speculator.propose(request, cap) if cap > 0 else Proposal()

    def _admit_one(self, request: Request, budget: int, out: SchedulerOutput) -> bool | None:
        """Admits a waiting request, reusing its longest cached prefix. Returns None (deferred)
        when a running request is still prefilling the very blocks this one would compute next."""
        rid = request.request_id
        if self._held_back(request):
            return False
        # prompt logprobs need every prompt position computed: such requests don't reuse the cache
        reuse = rid not in self.kv_cache.block_tables and request.params.prompt_logprobs is None
        prefix = self.kv_cache.match_prefix(request.all_token_ids, request.cache_salt) if reuse else []
        if self.kv_cache.cache is not None and self._prefix_in_flight(request, len(prefix)):
            return None
        start = max(request.num_computed_tokens, len(prefix) * self.kv_cache.block_size)
        remaining = request.num_tokens - start
        if remaining > budget and not self.config.enable_chunked_prefill:
            return False
        num_new = min(remaining, budget)
        table = self.kv_cache.allocate(rid, start + num_new, start, prefix, request.cache_salt)
        # with nothing running to free blocks, only the forks waiting behind it can
        while table is None and not self.running and self._release_a_waiting_fork(keep=request):
            table = self.kv_cache.allocate(rid, start + num_new, start, prefix, request.cache_salt)
        if table is None:
            return False
        if reuse:
            self.kv_cache.record_query(request.num_tokens, prefix)
        request.num_computed_tokens = start
        request.num_cached_tokens = max(request.num_cached_tokens, len(prefix) * self.kv_cache.block_size)
        self.waiting.remove(request)
        self._admit(request)
        out.scheduled.append(ScheduledRequest(request, start, num_new, table))
        return True

    def _held_back(self, request: Request) -> bool:
        """A request preempted more than ``max_preemptions`` times waits, at the head of the queue, until
        blocks for its whole remaining run are free (or nothing else runs): resuming it sooner would only
        get it preempted again."""
        if request.metrics.num_preemptions <= self.config.max_preemptions or not self.running:
            return False
        whole = self.kv_cache.blocks_needed(request.request_id, request.num_prompt_tokens + request.max_tokens)
        return whole > self.kv_cache.num_free_blocks + self.kv_cache.pool.num_evictable

    def _release_a_waiting_fork(self, keep: Request | None = None) -> bool:
        """Frees the blocks of the last waiting request that holds any (a fork waiting for its first step
        holds its parent's prompt blocks); whether there was one. The fork recomputes its prompt when
        admitted (a prefix-cache hit while those blocks stay cached). Called before a running request is
        preempted or, with nothing running, before the head of the queue is refused: otherwise forks waiting
        behind a request that needs their blocks wait for each other for ever."""
        for request in reversed(self.waiting):
            if request is not keep and request.request_id in self.kv_cache.block_tables:
                self.kv_cache.free(request.request_id)
                request.num_computed_tokens = 0
                return True
        return False

    def _prefix_in_flight(self, request: Request, num_cached_blocks: int) -> bool:
        """Whether a running request shares this one's next uncached block and has not computed it
        yet: admitting now would compute that prefix twice; a step later it is a cache hit."""
        bs = self.kv_cache.block_size
        end = (num_cached_blocks + 1) * bs
        if end >= request.num_tokens:
            return False
        head = request.all_token_ids[:end]
        return any(r.num_computed_tokens < end <= r.num_prompt_tokens and r.cache_salt == request.cache_salt
                   and r.all_token_ids[:end] == head for r in self.running)

    def _admit(self, request: Request) -> None:
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        # recompute: drop the K/V; prompt and generated tokens are kept and rerun on resumption
        self.kv_cache.free(request.request_id)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.metrics.num_preemptions += 1
        self.counters.num_preemptions += 1
        logger.info("preempted %s (%d tokens; preemption %d of this request, %d in all)", request.request_id,
                    request.num_tokens, request.metrics.num_preemptions, self.counters.num_preemptions)
        self.waiting.appendleft(request)
        out.preempted_request_ids.append(request.request_id)

    def update(self, out: SchedulerOutput, sampled: dict[str, int],
               spec_accepted: dict[str, list[int]] | None = None) -> list[Request]:
        """Advances the scheduled requests by the step's result; returns those that progressed
        (got a token or finished). Finished ones have already given their blocks back.
        ``spec_accepted``: the proposed tokens the model kept, before each request's sampled token."""
        self.counters.num_steps += 1
        progressed: list[Request] = []
        now = time.monotonic()
        for s in out.scheduled:
            request = s.request
            if request.status is not RequestStatus.RUNNING:
                continue  # aborted while the step ran
            request.num_computed_tokens += s.num_known_tokens
            if s.num_spec_tokens:
                self._take_accepted(s, (spec_accepted or {}).get(request.request_id), sampled)
            self.counters.prompt_tokens_computed += max(
                0, min(request.num_prompt_tokens, s.start + s.num_new_tokens) - s.start)
            self.kv_cache.cache_blocks(request.request_id, request.all_token_ids, request.num_computed_tokens,
                                       request.num_prompt_tokens)
            token = sampled.get(request.request_id)
            if token is None:
                continue
            request.append_output_token(token)
            self.counters.generation_tokens += 1
            if request.metrics.first_token_time is None:
                request.metrics.first_token_time = now
            request.metrics.last_token_time = now
            if request.pending_forks:
                self._fork(request)
            self._check_stop(request, token)
            progressed.append(request)
        return progressed

    def _take_accepted(self, s: ScheduledRequest, accepted: list[int] | None, sampled: dict[str, int]) -> None:
        """A speculated row: its kept proposal joins the output (its K/V was computed this step),
        and the blocks past what the request now needs go back to the pool."""
        request = s.request
        assert self.speculator is not None
        if request.request_id not in sampled:  # the row failed: nothing was verified
            accepted = []
        else:
            self.speculator.record(request.request_id, s.num_spec_tokens, len(accepted or ()))
        for token in accepted or ():  # never a stop token, and within max_tokens (see _propose)
            request.append_output_token(token)
            self.counters.generation_tokens += 1
        request.num_computed_tokens += len(accepted or ())
        self.kv_cache.truncate(request.request_id, request.num_tokens + 1)

    def _fork(self, parent: Request) -> None:
        """The parent's prompt is computed: its other samples share the prompt's blocks and start
        from its last token (whose block they copy on write), to sample their own first token."""
        for child in parent.pending_forks:
            self.kv_cache.fork(parent.request_id, child.request_id, parent.num_prompt_tokens)
            child.num_computed_tokens = parent.num_prompt_tokens - 1
            child.num_cached_tokens = child.num_computed_tokens
            self.requests[child.request_id] = child
            self._place_fork(child)
        parent.pending_forks = []

    def _place_fork(self, child: Request) -> None:
        self.waiting.appendleft(child)

    def append_forced_tokens(self, request: Request, tokens: list[int]) -> int:
        """Appends tokens decided without sampling (jump-forward); they are computed with the next
        step's chunk. Stops at a stop condition; returns how many were appended."""
        appended = 0
        for token in tokens:
            if request.status.finished:
                break
            request.append_output_token(token)
            self.counters.jump_forward_tokens += 1
            appended += 1
            self._check_stop(request, token)
        return appended

    def _check_stop(self, request: Request, token: int) -> None:
        status, reason = None, None
        n = request.num_output_tokens
        if token in request.stop_token_ids and n >= request.params.min_tokens:
            status = RequestStatus.FINISHED_STOPPED
            # as vLLM: the eos token is not a "stop reason", an explicit stop token id is
            reason = token if token in (request.params.stop_token_ids or ()) else None
        elif n >= request.max_tokens or request.num_tokens >= self.config.max_model_len:
            status = RequestStatus.FINISHED_LENGTH
        if status is not None:
            self.running.remove(request)
            self._finish(request, status, reason)
