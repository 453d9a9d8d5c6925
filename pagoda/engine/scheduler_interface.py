"""What the engine asks of a scheduler (as vLLM v1's ``core/sched/interface.py``), so that batching
variants plug in beside the continuous scheduler instead of as flags inside it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque

from pagoda.engine.request import Request, RequestStatus
from pagoda.engine.scheduler_counters import SchedulerCounters
from pagoda.engine.scheduler_output import SchedulerOutput
from pagoda.outputs import RequestOutput


class SchedulerInterface(ABC):
    """A scheduler owns its requests from ``add_request`` until they finish, and the KV blocks they hold.

    Contract:
    - ``schedule()`` decides the next step: every row it returns has its KV blocks allocated. A row
      may belong to a request the engine never added (a dummy row, e.g. static batching's padding);
      its sampled token is ignored and ``update`` skips it.
    - ``update(out, sampled, spec_accepted)`` applies a step's sampled tokens (``request_id -> token``),
      each after its request's kept proposed tokens (``spec_accepted``, speculative decoding), and
      returns the requests that progressed; those that finished (eos, length) have given their
      blocks back.
    - ``finish_request`` ends one request (abort, stop string, error) and frees its blocks at once;
      unknown ids are ignored (the request may have finished while its step was in flight).
    - ``append_forced_tokens`` appends tokens decided without a model step (jump-forward).
    - ``release(outputs)`` decides when a step's outputs leave the engine (at once, unless a batch
      holds its finished results until it ends); ``has_unfinished_requests`` counts held ones too.
    ``requests``, ``waiting``, ``running`` and ``counters`` are read by the engine's stats.
    """

    requests: dict[str, Request]
    waiting: deque[Request]
    running: list[Request]
    counters: SchedulerCounters

    @abstractmethod
    def add_request(self, request: Request) -> None: ...

    @abstractmethod
    def schedule(self) -> SchedulerOutput: ...

    @abstractmethod
    def update(self, out: SchedulerOutput, sampled: dict[str, int],
               spec_accepted: dict[str, list[int]] | None = None) -> list[Request]: ...

    @abstractmethod
    def finish_request(self, request_id: str, status: RequestStatus,
                       stop_reason: int | str | None = None) -> None: ...

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> None:
        for request_id in request_ids:
            self.finish_request(request_id, status)

    @abstractmethod
    def append_forced_tokens(self, request: Request, tokens: list[int]) -> int: ...

    @abstractmethod
    def has_unfinished_requests(self) -> bool: ...

    def release(self, outputs: list[RequestOutput]) -> list[RequestOutput]:
        return outputs
