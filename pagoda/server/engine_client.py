"""What the HTTP side needs of the engine, whatever runs it: one engine process
(``EngineProcessClient``) or data-parallel replicas behind a router (``DataParallelClient``)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pagoda.engine.stats import EngineStats
    from pagoda.lora.request import LoRARequest
    from pagoda.sampling_params import SamplingParams
    from pagoda.server.messages import EngineReady, RequestDelta


class EngineDeadError(RuntimeError):
    """The engine process is gone; nothing can be served until the server restarts."""


class EngineRequestError(RuntimeError):
    """The engine could not serve one request (an internal error); the engine itself goes on."""


@runtime_checkable
class EngineClient(Protocol):
    """The server's handle on its engine(s).

    - ``start()`` blocks until the model is loaded and returns what it serves (``info`` afterwards);
      ``shutdown()`` stops every engine process (idempotent).
    - ``generate(request_id, prompt_token_ids, params, priority=, arrival_time=, cache_salt=, lora_request=)``
      yields the request's deltas until the one with ``finished=True``. It raises
      ``InvalidRequestError`` if the engine rejects the request, ``EngineRequestError`` if it fails
      inside the engine, ``EngineDeadError`` if the engine dies meanwhile. Leaving the iterator
      early aborts the request (its KV blocks are freed); so does ``abort(request_id)``.
      ``unload_lora(id)`` makes every engine forget an adapter (no answer).
    - ``alive`` turns False for good when an engine dies (``dead_reason`` says why): ``/health``
      answers 503. ``latest_stats`` is the stats of the last step (None before any),
      ``get_stats()`` fresh ones; ``num_waiting`` / ``num_in_flight`` count this side's requests.
    """

    info: EngineReady | None

    def start(self, timeout_s: float = 600.0) -> EngineReady: ...

    def shutdown(self, timeout_s: float = 10.0) -> None: ...

    @property
    def alive(self) -> bool: ...

    @property
    def dead_reason(self) -> str | None: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def latest_stats(self) -> EngineStats | None: ...

    @property
    def num_waiting(self) -> int: ...

    @property
    def num_in_flight(self) -> int: ...

    def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                 priority: int = 0, arrival_time: float | None = None,
                 cache_salt: str | None = None, lora_request: LoRARequest | None = None
                 ) -> AsyncGenerator[RequestDelta, None]: ...

    def abort(self, request_id: str) -> None: ...

    def unload_lora(self, lora_int_id: int) -> None: ...

    async def get_stats(self, timeout_s: float = 30.0) -> EngineStats: ...
