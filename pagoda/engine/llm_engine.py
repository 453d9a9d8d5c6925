"""The engine: requests in, one schedule -> execute -> update iteration per ``step()``, outputs out."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from functools import reduce
from typing import Any, NamedTuple

from pagoda.config import CacheConfig, ModelConfig, SchedulerConfig
from pagoda.distributed.parallel_stats import ParallelStats
from pagoda.engine.input_processor import InputProcessor
from pagoda.engine.model_runner import ModelRunnerOutput
from pagoda.engine.output_processor import OutputProcessor
from pagoda.engine.request import Request, RequestStatus
from pagoda.engine.request_group import RequestGroup
from pagoda.engine.request_registry import RequestRegistry
from pagoda.engine.runner import Runner
from pagoda.engine.scheduler_interface import SchedulerInterface
from pagoda.engine.scheduler_output import SchedulerOutput
from pagoda.engine.schedulers import make_scheduler
from pagoda.engine.stats import EngineStats
from pagoda.errors import InvalidRequestError
from pagoda.kv_cache.kv_cache_manager import BlockMapSnapshot, KVCacheManager
from pagoda.lora.request import LoRARequest
from pagoda.outputs import RequestOutput
from pagoda.sampling_params import SamplingParams
from pagoda.spec.config import SpeculativeConfig
from pagoda.spec.spec_counters import SpecCounters
from pagoda.spec.speculator import Speculator
from pagoda.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

PARALLEL_STATS_INTERVAL_S = 1.0  # how stale get_stats() may leave a parallel runner's stats


class InFlight(NamedTuple):
    """A step submitted to the runner and not yet completed."""

    scheduler: SchedulerInterface
    scheduled: SchedulerOutput
    handle: Any
    submitted: float  # time.perf_counter() before submission


class LLMEngine:
    """Continuous-batching LLM engine over a paged KV cache.

    ``add_request`` validates and queues (raising ``InvalidRequestError`` for that request only);
    ``step`` runs one iteration and returns the outputs of requests that made progress (fields
    cumulative; text held back where a stop string might still match); ``abort_request`` ends a
    request and returns its KV blocks at once; ``shutdown`` releases the runner (ranks, memory).
    Built by ``pagoda.engine.engine_factory.build_engine``.
    """

    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig, scheduler_config: SchedulerConfig,
                 runner: Runner, tokenizer: Tokenizer, model_name: str,
                 speculative_config: SpeculativeConfig | None = None,
                 spec_max_generated_rows: int | None = None) -> None:
        self.model_config = model_config
        self.cache_config = cache_config
        self.scheduler_config = scheduler_config
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.runner = runner
        self.kv_cache = KVCacheManager(cache_config.num_blocks, cache_config.block_size,
                                       cache_config.enable_prefix_caching,
                                       cache_generated_tokens=cache_config.deterministic)
        # a pipeline keeps several steps in flight, each from its own scheduler over the shared KV
        # cache (vLLM's virtual engines); they share out max_num_seqs
        v = runner.num_virtual_engines
        per_engine = replace(scheduler_config, max_num_seqs=max(1, -(-scheduler_config.max_num_seqs // v)))
        self.schedulers = [make_scheduler(per_engine, self.kv_cache,
                                          Speculator(speculative_config, spec_max_generated_rows)
                                          if speculative_config else None)
                           for _ in range(v)]
        self.requests = RequestRegistry()
        self.input_processor = InputProcessor(tokenizer, model_config)
        self.output_processor = OutputProcessor(tokenizer, self.requests)
        self._in_flight: deque[InFlight] = deque()
        self._turn = 0  # the virtual engine that schedules next
        self._parallel: ParallelStats | None = None  # the runner's last per-rank stats
        self._parallel_at = 0.0  # and when they were taken (time.monotonic)
        self._shut_down = False
        self.last_scheduled: SchedulerOutput | None = None  # the step the last step() completed, if any
        # the last step() found nothing it could run (waiting requests not ready yet, e.g. a grammar
        # still compiling): a caller looping on step() may wait a little instead of spinning
        self.last_step_idle = False

    # -- requests -----------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams, *,
                    priority: int = 0, arrival_time: float | None = None, cache_salt: str | None = None,
                    lora_request: LoRARequest | None = None) -> None:
        if self._shut_down:
            raise RuntimeError("the engine has been shut down")
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        if lora_request is not None:
            self.add_lora(lora_request)
        group = self.input_processor.process(request_id, prompt, params, priority=priority, arrival_time=arrival_time,
                                             cache_salt=cache_salt, lora_request=lora_request)
        scheduler = min(self.schedulers, key=lambda s: len(s.requests))
        self.requests.add(group, scheduler)
        scheduler.add_request(group.samples[0].request)  # the others fork from it

    def add_lora(self, lora_request: LoRARequest) -> None:
        """Reads and checks an adapter (once per id), so that requests can use it; a bad one raises
        ``InvalidRequestError`` naming the problem and the engine goes on."""
        add = getattr(self.runner, "add_lora", None)
        if add is None:
            raise InvalidRequestError("LoRA adapters are not supported by this engine's runner", "lora_request")
        try:
            add(lora_request)
        except ValueError as exc:  # LoRALoadError, or LoRA not enabled
            raise InvalidRequestError(str(exc), "lora_request") from exc

    def remove_lora(self, lora_id: int) -> None:
        """Forgets an adapter (its host copy and slot); requests already running with it finish with
        it (read again from its directory)."""
        remove = getattr(self.runner, "remove_lora", None)
        if remove is not None:
            remove(lora_id)

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        for request_id in [request_ids] if isinstance(request_ids, str) else request_ids:
            if request_id not in self.requests:
                continue
            sample_ids = [s.request.request_id for s in self.requests.group(request_id).samples]
            scheduler = self.requests.scheduler_of(sample_ids[0])  # a group's samples share one
            self.requests.remove(request_id)
            if scheduler is not None:
                scheduler.finish_requests(sample_ids, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        return len(self.requests) > 0 or any(s.has_unfinished_requests() for s in self.schedulers)

    @property
    def scheduler(self) -> SchedulerInterface:
        """The scheduler of a one-step-at-a-time engine (a pipeline has one per virtual engine)."""
        return self.schedulers[0]

    # -- one iteration ------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """One virtual engine's turn: its step enters the runner, and the oldest step in flight
        completes once every virtual engine has one in (or this one had nothing to run). With one
        virtual engine that is submit then complete; with a pipeline, stage 0 starts the next step
        while the later stages still work on the previous ones, and a virtual engine's next step is
        always scheduled after its last one's tokens are known."""
        self.last_scheduled = None
        self.last_step_idle = False
        scheduler = self.schedulers[self._turn]
        self._turn = (self._turn + 1) % len(self.schedulers)
        scheduled = scheduler.schedule()
        if not scheduled.is_empty:
            try:
                submitted = time.perf_counter()
                self._in_flight.append(InFlight(scheduler, scheduled, self.runner.submit(scheduled), submitted))
            except Exception as exc:  # noqa: BLE001  (one bad step must not take the engine down)
                return self._step_failed(scheduled, exc)
            if len(self._in_flight) < len(self.schedulers):
                return []
        if not self._in_flight:
            self.last_step_idle = True
            return scheduler.release([])
        scheduler, scheduled, handle, submitted = self._in_flight.popleft()
        try:
            result = self.runner.complete(handle)
        except Exception as exc:  # noqa: BLE001
            return self._step_failed(scheduled, exc)
        speculator = getattr(scheduler, "speculator", None)
        if speculator is not None and len(self.schedulers) == 1:  # a pipeline's steps overlap: no step time
            speculator.record_step(scheduled, time.perf_counter() - submitted)
        return self._update(scheduler, scheduled, result)

    def _update(self, scheduler: SchedulerInterface, scheduled: SchedulerOutput, result: ModelRunnerOutput
                ) -> list[RequestOutput]:
        """A step's sampled tokens -> the scheduler's state and the requests' outputs."""
        self.last_scheduled = scheduled
        self.output_processor.record_logprobs(result)
        failed = self._fail({s.request: result.failed[s.request.request_id] for s in scheduled.scheduled
                             if s.request.request_id in result.failed})
        progressed = scheduler.update(scheduled, result.sampled, result.spec_accepted)
        touched = failed | self.output_processor.process(scheduler, progressed, result)
        touched |= self.output_processor.finish_pooling(scheduler, scheduled, result)
        return scheduler.release(self.output_processor.outputs(touched))

    def _step_failed(self, scheduled: SchedulerOutput, exc: Exception) -> list[RequestOutput]:
        logger.exception("engine step failed; failing the %d requests in it", len(scheduled.scheduled),
                         exc_info=exc)
        message = f"{type(exc).__name__}: {exc}"
        return self.output_processor.outputs(self._fail({s.request: message for s in scheduled.scheduled}))

    def _fail(self, failures: dict[Request, str]) -> dict[str, RequestGroup]:
        """Ends each request with its error (its blocks return at once); returns their groups."""
        groups: dict[str, RequestGroup] = {}
        for request, message in failures.items():
            group = self.requests.group_of(request.request_id)
            if group is None:  # aborted while its step was in flight, or a dummy row
                continue
            request.error = message
            scheduler = self.requests.scheduler_of(request.request_id)
            if scheduler is not None:
                scheduler.finish_request(request.request_id, RequestStatus.FINISHED_ERROR)
            groups[group.request_id] = group
        return groups

    # -- lifecycle ----------------------------------------------------------------------
    def shutdown(self) -> None:
        """Aborts what is left and shuts the runner down (worker ranks, process group, KV memory)."""
        self.abort_request([g.request_id for g in self.requests.groups()])
        self._in_flight.clear()
        self._shut_down = True
        self.runner.shutdown()

    # -- introspection ------------------------------------------------------------------
    def get_stats(self) -> EngineStats:
        counters = [s.counters for s in self.schedulers]

        def total(name: str) -> int:
            return sum(getattr(c, name) for c in counters)

        return EngineStats(
            num_running=sum(len(s.running) for s in self.schedulers),
            num_waiting=sum(len(s.waiting) for s in self.schedulers),
            kv_cache_usage=self.kv_cache.usage, num_kv_blocks=self.cache_config.num_blocks,
            num_free_kv_blocks=self.kv_cache.num_free_blocks, num_steps=total("num_steps"),
            prompt_tokens_total=total("prompt_tokens_computed"), generation_tokens_total=total("generation_tokens"),
            num_preemptions_total=total("num_preemptions"), num_requests_finished_total=self.requests.num_finished,
            jump_forward_tokens_total=total("jump_forward_tokens"),
            prefix_cache_queries_total=self.kv_cache.counters.queried_tokens,
            prefix_cache_hits_total=self.kv_cache.counters.hit_tokens,
            prefix_cache_evictions_total=self.kv_cache.cache.num_evictions if self.kv_cache.cache else 0,
            spec=self._spec_counters(),
            parallel=self._parallel_stats())

    def _spec_counters(self) -> SpecCounters | None:
        counters = [c for s in self.schedulers if (c := getattr(s, "speculator", None)) is not None]
        return reduce(SpecCounters.add, (c.counters for c in counters), SpecCounters()) if counters else None

    def _parallel_stats(self) -> ParallelStats | None:
        """A multi-process runner's per-rank seconds, at most ``PARALLEL_STATS_INTERVAL_S`` old: taking them
        stops every rank for an all-gather, and the server's loop asks for stats after each step."""
        if not self.runner.alive:  # a lost rank would never answer
            return self._parallel
        now = time.monotonic()
        if self._parallel is None or now - self._parallel_at >= PARALLEL_STATS_INTERVAL_S:
            self._parallel, self._parallel_at = self.runner.stats(), now
        return self._parallel

    def get_block_map(self) -> BlockMapSnapshot:
        """Which request or cache node owns each KV block, and which are free (for dashboards)."""
        return self.kv_cache.snapshot()

    def check_integrity(self) -> None:
        self.kv_cache.check_integrity()
