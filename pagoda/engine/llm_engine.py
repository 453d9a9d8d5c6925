"""The engine: requests in, one schedule -> execute -> update iteration per ``step()``, outputs out."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import replace

import torch

from pagoda.attention.backend import resolve_backend_name
from pagoda.config import CacheConfig, ModelConfig, SchedulerConfig
from pagoda.device import resolve_device
from pagoda.distributed.parallel_stats import ParallelStats
from pagoda.engine.args import EngineArgs
from pagoda.engine.model_runner import ModelRunner, ModelRunnerOutput, kv_cache_bytes_per_block
from pagoda.engine.request import Request, RequestStatus
from pagoda.engine.request_group import RequestGroup
from pagoda.engine.scheduler import Scheduler
from pagoda.engine.scheduler_output import SchedulerOutput
from pagoda.engine.static_batch import StaticBatchResults
from pagoda.engine.stats import EngineStats
from pagoda.errors import InvalidRequestError
from pagoda.kv_cache.kv_cache_manager import BlockMapSnapshot, KVCacheManager
from pagoda.outputs import Logprob, PositionLogprobs, RequestMetrics, RequestOutput
from pagoda.sample.sampler import RowLogprobs, Sampler
from pagoda.sampling_params import SamplingParams
from pagoda.tokenizer import Tokenizer
from pagoda.weights.model_loader import ModelFiles, load_model, resolve_dtype, resolve_quantization

logger = logging.getLogger(__name__)

PARALLEL_STATS_INTERVAL_S = 1.0  # how stale get_stats() may leave a parallel runner's stats


class LLMEngine:
    """Continuous-batching LLM engine over a paged KV cache.

    ``add_request`` validates and queues (raising ``InvalidRequestError`` for that request only);
    ``step`` runs one iteration and returns the outputs of requests that made progress (fields
    cumulative; text held back where a stop string might still match); ``abort_request`` ends a
    request and returns its KV blocks at once.
    """

    def __init__(self, model_config: ModelConfig, cache_config: CacheConfig, scheduler_config: SchedulerConfig,
                 runner: ModelRunner, tokenizer: Tokenizer, model_name: str) -> None:
        self.model_config = model_config
        self.cache_config = cache_config
        self.scheduler_config = scheduler_config
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.runner = runner
        self.kv_cache = KVCacheManager(cache_config.num_blocks, cache_config.block_size,
                                       cache_config.enable_prefix_caching)
        # a pipeline keeps several steps in flight, each from its own scheduler over the shared KV
        # cache (vLLM's virtual engines); they share out max_num_seqs
        v = getattr(runner, "num_virtual_engines", 1)
        per_engine = replace(scheduler_config, max_num_seqs=max(1, -(-scheduler_config.max_num_seqs // v)))
        self.schedulers = [Scheduler(per_engine, self.kv_cache) for _ in range(v)]
        self._in_flight: deque[tuple[Scheduler, SchedulerOutput, object]] = deque()
        self._turn = 0  # the virtual engine that schedules next
        self._scheduler_of: dict[str, Scheduler] = {}
        self._static = StaticBatchResults() if scheduler_config.batching == "static" else None
        self._groups: dict[str, RequestGroup] = {}
        self._sample_to_group: dict[str, RequestGroup] = {}
        self._num_finished = 0
        self._parallel: ParallelStats | None = None  # the runner's last per-rank stats
        self._parallel_at = 0.0  # and when they were taken (time.monotonic)

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> LLMEngine:
        if args.data_parallel_size > 1:
            raise ValueError("data_parallel_size > 1 runs replicas behind a router: use `pagoda serve --dp N`; "
                             "one engine is one replica")
        if args.num_threads:
            torch.set_num_threads(args.num_threads)
        device = resolve_device(args.device)
        attention_backend = resolve_backend_name(args.attention_backend, device)
        start = time.perf_counter()
        if args.model is None:
            from pagoda.weights.default_model import default_model_path

            path = default_model_path()
        else:
            path = args.model
        files = ModelFiles(path)
        dtype = resolve_dtype(args.dtype, device)
        hf_config = files.hf_config()
        model_config = ModelConfig.from_hf_config(hf_config, dtype, args.max_model_len)
        tokenizer = files.tokenizer(args.tokenizer)
        quantization = resolve_quantization(args.quantization, files, device)
        distributed = args.tensor_parallel_size * args.pipeline_parallel_size > 1  # ranks load their own shards
        if distributed and device.type == "cuda":
            raise ValueError("tensor / pipeline parallelism runs on CPU ranks only (gloo / shared memory); "
                             "multi-GPU over NCCL is not implemented: use device='cpu' or one GPU")
        model = None if distributed else load_model(files, model_config, device, attention_backend,
                                                    quantization=quantization, show_progress=args.show_progress)

        per_block = kv_cache_bytes_per_block(model_config, args.block_size)
        num_blocks = args.num_kv_blocks or max(1, int(args.kv_cache_memory_gb * 2**30 // per_block))
        capacity = num_blocks * args.block_size
        if model_config.max_model_len > capacity:
            # a lone request must always fit, or it could never finish
            logger.warning("max_model_len %d exceeds the KV cache (%d tokens); capping it",
                           model_config.max_model_len, capacity)
            model_config = replace(model_config, max_model_len=capacity)
        cache_config = CacheConfig(args.block_size, num_blocks, args.enable_prefix_caching)
        if args.batching not in ("continuous", "static"):
            raise ValueError(f"batching must be 'continuous' or 'static', got {args.batching!r}")
        scheduler_config = SchedulerConfig(
            max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
            max_model_len=model_config.max_model_len, batching=args.batching, policy=args.scheduling_policy,
            max_wait_s=args.max_wait_s)
        sampler = Sampler(tokenizer.eos_token_ids, torch.Generator().manual_seed(args.seed))
        if distributed:  # issue 8: rank 0 here, the other ranks in worker processes
            from pagoda.distributed.executor import MultiprocExecutor

            runner = MultiprocExecutor(args.parallel_config(), files.path, model_config, cache_config, sampler,
                                       quantization)
        else:
            runner = ModelRunner(model, model_config, cache_config, sampler, device, attention_backend)
            if device.type == "cuda" and not args.enforce_eager:
                runner.enable_decode_graphs(scheduler_config.max_num_seqs, model_config.max_model_len)
        logger.info("loaded %s (%s) in %.1f s; KV cache %d blocks x %d tokens", files.name, dtype,
                    time.perf_counter() - start, num_blocks, args.block_size)
        return cls(model_config, cache_config, scheduler_config, runner, tokenizer, files.name)

    # -- requests -----------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams, *,
                    priority: int = 0, arrival_time: float | None = None, cache_salt: str | None = None) -> None:
        if request_id in self._groups:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("params must be a SamplingParams", "sampling_params")
        prompt_text, prompt_ids = self._tokenize(prompt)
        max_len = self.model_config.max_model_len
        if len(prompt_ids) >= max_len:
            raise InvalidRequestError(
                f"the prompt has {len(prompt_ids)} tokens, but the model's context is {max_len} tokens "
                f"(leaving no room to generate)", "prompt")
        room = max_len - len(prompt_ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        metrics = RequestMetrics(arrival_time=arrival_time or time.monotonic())
        group = RequestGroup.create(request_id, prompt_text, prompt_ids, params, self.tokenizer, metrics,
                                    max_tokens=max_tokens, priority=priority, cache_salt=cache_salt)
        samples = group.samples
        self._groups[request_id] = group
        for s in samples:
            self._sample_to_group[s.request.request_id] = group
        # the other samples fork from the first once its prompt is computed, sharing its blocks
        first = samples[0].request
        first.pending_forks = [s.request for s in samples[1:]]
        scheduler = min(self.schedulers, key=lambda s: len(s.requests))
        for s in samples:
            self._scheduler_of[s.request.request_id] = scheduler
        scheduler.add_request(first)

    def _tokenize(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("the prompt must not be empty", "prompt")
            return prompt, self.tokenizer.encode(prompt)
        if not isinstance(prompt, (list, tuple)) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise InvalidRequestError("the prompt must be a string or a list of token ids", "prompt")
        if not prompt:
            raise InvalidRequestError("the prompt must not be empty", "prompt")
        vocab = self.model_config.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise InvalidRequestError(f"token ids out of range [0, {vocab}): {bad[:5]}", "prompt")
        return None, list(prompt)

    def abort_request(self, request_ids: str | Iterable[str]) -> None:
        for request_id in [request_ids] if isinstance(request_ids, str) else request_ids:
            group = self._groups.pop(request_id, None)
            if group is None:
                continue
            for s in group.samples:
                self._sample_to_group.pop(s.request.request_id, None)
                self._scheduler_of.pop(s.request.request_id).finish_request(
                    s.request.request_id, RequestStatus.FINISHED_ABORTED)
            self._num_finished += 1

    def has_unfinished_requests(self) -> bool:
        return bool(self._groups) or (self._static is not None and self._static.holding)

    @property
    def scheduler(self) -> Scheduler:
        """The scheduler of a one-step-at-a-time engine (a pipeline has one per virtual engine)."""
        return self.schedulers[0]

    # -- one iteration ------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if len(self.schedulers) > 1:
            return self._pipelined_step()
        scheduled = self.scheduler.schedule()
        if scheduled.is_empty:
            return self._batch_results(self.scheduler, [])
        try:
            result = self.runner.execute(scheduled)
        except Exception as exc:  # noqa: BLE001  (one bad step must not take the engine down)
            return self._step_failed(scheduled, exc)
        return self._apply(self.scheduler, scheduled, result)

    def _pipelined_step(self) -> list[RequestOutput]:
        """One virtual engine's turn: its step enters the pipeline, and the oldest step in flight is
        finished once every virtual engine has one in (or this one had nothing to run). Stage 0
        thus starts the next step while the later stages still work on the previous ones, and a
        virtual engine's next step is always scheduled after its last one's tokens are known."""
        scheduler = self.schedulers[self._turn]
        self._turn = (self._turn + 1) % len(self.schedulers)
        scheduled = scheduler.schedule()
        if not scheduled.is_empty:
            try:
                self._in_flight.append((scheduler, scheduled, self.runner.submit(scheduled)))
            except Exception as exc:  # noqa: BLE001
                return self._step_failed(scheduled, exc)
            if len(self._in_flight) < len(self.schedulers):
                return []
        if not self._in_flight:
            return self._batch_results(scheduler, [])
        scheduler, scheduled, step = self._in_flight.popleft()
        try:
            result = self.runner.complete(step)
        except Exception as exc:  # noqa: BLE001
            return self._step_failed(scheduled, exc)
        return self._apply(scheduler, scheduled, result)

    def _step_failed(self, scheduled: SchedulerOutput, exc: Exception) -> list[RequestOutput]:
        logger.exception("engine step failed; failing the %d requests in it", len(scheduled.scheduled),
                         exc_info=exc)
        message = f"{type(exc).__name__}: {exc}"
        touched = self._fail({s.request: message for s in scheduled.scheduled})
        return [self._output(g) for g in touched.values()]

    def _apply(self, scheduler: Scheduler, scheduled: SchedulerOutput, result: ModelRunnerOutput
               ) -> list[RequestOutput]:
        """A step's sampled tokens -> the scheduler's state and the requests' outputs."""
        self._record_logprobs(result)
        touched = self._fail({s.request: result.failed[s.request.request_id] for s in scheduled.scheduled
                              if s.request.request_id in result.failed})
        progressed = scheduler.update(scheduled, result.sampled)
        for request in progressed:
            group = self._sample_to_group.get(request.request_id)
            if group is None:
                continue
            sample = group.sample_of(request)
            num_new = 1 + self._jump_forward(request)
            stop = sample.detokenizer.update(request.output_token_ids[-num_new:])
            if stop is not None and not request.status.finished:
                scheduler.finish_request(request.request_id, RequestStatus.FINISHED_STOPPED, stop)
            elif stop is not None:  # the same token also hit eos/length: the stop string wins
                request.status, request.stop_reason = RequestStatus.FINISHED_STOPPED, stop
            touched[group.request_id] = group
        for rid in result.prompt_logprobs:
            group = self._sample_to_group.get(rid)
            if group is not None and group.params.prompt_logprobs is not None:
                touched[group.request_id] = group
        return self._batch_results(scheduler, [self._output(g) for g in touched.values()])

    def _batch_results(self, scheduler: Scheduler, outputs: list[RequestOutput]) -> list[RequestOutput]:
        """Continuous batching returns each result as soon as it is done; static batching a batch's
        together when it ends."""
        if self._static is None:
            return outputs
        return self._static.release(scheduler, outputs, bool(scheduler.running))

    def _jump_forward(self, request: Request) -> int:
        """Appends the tokens a request's grammar forces next, without a model step (they run as one
        chunk in the next step); returns how many. Skipped when logprobs are asked for, since the
        model's raw logprobs of forced tokens are not computed."""
        if request.status.finished or request.params.logprobs is not None:
            return 0
        forced: list[int] = []
        for processor in request.params.logits_processors:
            if hasattr(processor, "forced_tokens"):
                forced = processor.forced_tokens(request.output_token_ids)
                if forced:
                    break
        return self._scheduler_of[request.request_id].append_forced_tokens(request, forced) if forced else 0

    def _record_logprobs(self, result: ModelRunnerOutput) -> None:
        for rid, row in result.logprobs.items():
            request = self._request(rid)
            if request is not None:
                request.logprobs.append(self._position_logprobs(row, result.sampled[rid]))
                request.cumulative_logprob += row.token_logprob
        for rid, entries in result.prompt_logprobs.items():
            request = self._request(rid)
            if request is not None:
                request.prompt_logprobs.extend(entries)

    def _request(self, request_id: str) -> Request | None:
        scheduler = self._scheduler_of.get(request_id)
        return None if scheduler is None else scheduler.requests.get(request_id)

    def _position_logprobs(self, row: RowLogprobs, token: int) -> PositionLogprobs:
        decode = self.tokenizer.decode
        entry = {token: Logprob(row.token_logprob, row.token_rank, decode([token], skip_special_tokens=False))}
        for rank, (t, lp) in enumerate(row.top, 1):
            if t not in entry:
                entry[t] = Logprob(lp, rank, decode([t], skip_special_tokens=False))
        return entry

    def _fail(self, failures: dict[Request, str]) -> dict[str, RequestGroup]:
        """Ends each request with its error (its blocks return at once); returns their groups."""
        groups: dict[str, RequestGroup] = {}
        for request, message in failures.items():
            request.error = message
            scheduler = self._scheduler_of.get(request.request_id)
            if scheduler is not None:  # None: aborted while its step was in flight
                scheduler.finish_request(request.request_id, RequestStatus.FINISHED_ERROR)
            group = self._sample_to_group.get(request.request_id)
            if group is not None:
                groups[group.request_id] = group
        return groups

    def _output(self, group: RequestGroup) -> RequestOutput:
        """The group's output; a finished group leaves the engine's books."""
        output = group.output()
        if output.finished:
            self._groups.pop(group.request_id, None)
            for s in group.samples:
                self._sample_to_group.pop(s.request.request_id, None)
                self._scheduler_of.pop(s.request.request_id, None)
            self._num_finished += 1
        return output

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
            num_preemptions_total=total("num_preemptions"), num_requests_finished_total=self._num_finished,
            jump_forward_tokens_total=total("jump_forward_tokens"),
            prefix_cache_queries_total=self.kv_cache.counters.queried_tokens,
            prefix_cache_hits_total=self.kv_cache.counters.hit_tokens,
            prefix_cache_evictions_total=self.kv_cache.cache.num_evictions if self.kv_cache.cache else 0,
            parallel=self._parallel_stats())

    def _parallel_stats(self) -> ParallelStats | None:
        """A multi-process runner's per-rank seconds, at most ``PARALLEL_STATS_INTERVAL_S`` old: taking them
        stops every rank for an all-gather, and the server's loop asks for stats after each step."""
        stats = getattr(self.runner, "stats", None)  # only MultiprocExecutor has them
        if stats is None or not getattr(self.runner, "alive", True):  # a lost rank would never answer
            return self._parallel
        now = time.monotonic()
        if self._parallel is None or now - self._parallel_at >= PARALLEL_STATS_INTERVAL_S:
            self._parallel, self._parallel_at = stats(), now
        return self._parallel

    def get_block_map(self) -> BlockMapSnapshot:
        """Which request or cache node owns each KV block, and which are free (for dashboards)."""
        return self.kv_cache.snapshot()

    def check_integrity(self) -> None:
        self.kv_cache.check_integrity()

