"""Typed messages between the HTTP process and the engine process.

The HTTP process tokenizes and validates; the engine process only runs ``engine.step()``
and sends back what changed. Everything here is a plain picklable record: no callables,
no tensors. One ``StepResult`` goes back per engine-loop iteration (not one per request),
so 200 concurrent streams cost one queue round trip per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pagoda.engine.stats import EngineStats
from pagoda.lora.request import LoRARequest
from pagoda.outputs import PositionLogprobs, RequestMetrics
from pagoda.sampling_params import SamplingParams
from pagoda.server.dashboard_snapshot import DashboardSnapshot

if TYPE_CHECKING:
    from pagoda.tokenizer import Tokenizer

# --- HTTP process -> engine process ---


@dataclass(frozen=True)
class AddRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams  # validated; logits_processors: only pagoda.structured's DeferredGuidedProcessor
    arrival_time: float  # time.monotonic(), comparable across processes on one host
    priority: int = 0
    cache_salt: str | None = None  # requests share cached prefixes only with the same salt
    lora_request: LoRARequest | None = None  # the adapter it runs with (None: the base model)


@dataclass(frozen=True)
class UnloadLoRA:
    """Forget an adapter (its host copy and slot); nothing is answered."""

    lora_int_id: int


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class GetStats:
    """Asks for a StepResult carrying fresh stats; answered after every message sent before it."""

    token: int


@dataclass(frozen=True)
class GetDashboard:
    """Asks for a DashboardSnapshot: steps recorded after ``since_step``, latency samples taken after
    ``since_time``; answered like GetStats. The engine keeps its dashboard feed on while these arrive."""

    token: int
    since_step: int = -1
    since_time: float = 0.0


@dataclass(frozen=True)
class Shutdown:
    pass


# --- engine process -> HTTP process ---


@dataclass(frozen=True)
class EngineReady:
    model_name: str
    max_model_len: int
    vocab_size: int
    pid: int
    tokenizer: Tokenizer  # the engine's pagoda.tokenizer.Tokenizer (picklable): one source of truth for both sides
    max_lora_rank: int | None = None  # with LoRA enabled: the highest adapter rank it accepts


@dataclass(frozen=True)
class EngineFailed:
    """The engine could not start, or its loop died; the HTTP process fails everything pending."""

    message: str


@dataclass
class SampleDelta:
    """What one sample produced since the previous delta (texts and ids are increments)."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[PositionLogprobs] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None  # 'stop' | 'length' | 'abort' | 'error'
    stop_reason: int | str | None = None


@dataclass
class RequestDelta:
    request_id: str
    samples: list[SampleDelta]
    finished: bool
    prompt_logprobs: list[PositionLogprobs | None] | None = None  # sent once, with the first delta
    metrics: RequestMetrics | None = None  # sent with the last delta
    num_cached_tokens: int = 0
    error: str | None = None  # set when the engine failed this request (finish_reason 'error')
    embedding: list[float] | None = None  # a pooling request's result, with its last delta

    def merged(self, later: RequestDelta) -> RequestDelta:
        """This delta followed by ``later`` (of the same request) as one: texts, ids and logprobs
        joined per sample, the end and its metrics from ``later``. A reader that fell behind takes
        several steps' deltas at once, so its per-delta work does not grow with its lag."""
        samples = {s.index: s for s in self.samples}
        for s in later.samples:
            first = samples.get(s.index)
            if first is None:
                samples[s.index] = s
                continue
            logprobs = None if first.logprobs is None and s.logprobs is None else \
                [*(first.logprobs or ()), *(s.logprobs or ())]
            samples[s.index] = SampleDelta(index=s.index, text=first.text + s.text,
                                           token_ids=first.token_ids + s.token_ids, logprobs=logprobs,
                                           cumulative_logprob=s.cumulative_logprob, finish_reason=s.finish_reason,
                                           stop_reason=s.stop_reason)
        return RequestDelta(
            request_id=self.request_id, samples=sorted(samples.values(), key=lambda s: s.index),
            finished=later.finished,
            prompt_logprobs=self.prompt_logprobs if self.prompt_logprobs is not None else later.prompt_logprobs,
            metrics=later.metrics, num_cached_tokens=later.num_cached_tokens, error=later.error,
            embedding=later.embedding)


@dataclass(frozen=True)
class RequestRejected:
    """engine.add_request refused the request; ``status`` is the HTTP code it maps to."""

    request_id: str
    message: str
    param: str | None
    status: int


@dataclass
class StepResult:
    deltas: list[RequestDelta] = field(default_factory=list)
    rejected: list[RequestRejected] = field(default_factory=list)
    stats: EngineStats | None = None  # taken after this iteration
    stats_token: int | None = None  # echoes GetStats.token when this result answers one
    dashboard: DashboardSnapshot | None = None
    dashboard_token: int | None = None  # echoes GetDashboard.token
