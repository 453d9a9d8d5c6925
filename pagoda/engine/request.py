"""One sequence being generated: its tokens, progress through the model, and status."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from pagoda.lora.request import LoRARequest
from pagoda.outputs import PositionLogprobs, RequestMetrics
from pagoda.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = {RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED,
             RequestStatus.FINISHED_ERROR}


@dataclass(eq=False)
class Request:
    """A sequence in the scheduler. ``num_computed_tokens`` of ``all_token_ids`` have K/V in the
    cache; the rest (prompt not yet prefilled, or the last sampled token) run next."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    max_tokens: int  # resolved: never past the context length
    stop_token_ids: frozenset[int]  # eos (unless ignore_eos) and params.stop_token_ids
    metrics: RequestMetrics
    priority: int = 0
    seed: int | None = None
    generator: torch.Generator | None = None  # for seeded requests: re-seeded by position each draw
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    output_token_ids: list[int] = field(default_factory=list)
    all_token_ids: list[int] = field(default_factory=list)
    cache_salt: str | None = None  # requests with different salts never share cached prefixes
    lora_request: LoRARequest | None = None  # the adapter it runs with (None: the base model)
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache (or shared by a fork)
    pending_forks: list[Request] = field(default_factory=list)  # other samples, forked after the prompt
    stop_reason: int | str | None = None
    error: str | None = None
    # filled when params.logprobs / params.prompt_logprobs ask for them
    logprobs: list[PositionLogprobs] = field(default_factory=list)
    cumulative_logprob: float = 0.0
    prompt_logprobs: list[PositionLogprobs | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    @property
    def finish_reason(self) -> str | None:
        if not self.status.finished:
            return None
        return self.status.value
