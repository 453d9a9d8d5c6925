"""The HTTP process's handle on one engine process (an ``EngineClient``).

``EngineProcessClient.start()`` spawns the engine process and waits until it is ready.
``generate()`` is an async iterator of ``RequestDelta``s for one request; leaving it early
(the client went away, the task was cancelled) aborts the request in the engine, which
frees its KV blocks. A reader thread takes results off the output queue and hands them to
the event loop. If the engine process dies, every pending request fails at once with
``EngineDeadError`` and ``alive`` turns False (``/health`` answers 503).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from pagoda.engine.args import EngineArgs
from pagoda.engine.stats import EngineStats
from pagoda.errors import InvalidRequestError
from pagoda.lora.request import LoRARequest
from pagoda.sampling_params import SamplingParams
from pagoda.server.dashboard_snapshot import DashboardSnapshot
from pagoda.server.engine_client import EngineDeadError, EngineRequestError
from pagoda.server.engine_process import make_llm_engine, run_engine_process
from pagoda.server.messages import (
    AbortRequest,
    AddRequest,
    EngineFailed,
    EngineReady,
    GetDashboard,
    GetStats,
    RequestDelta,
    RequestRejected,
    Shutdown,
    StepResult,
    UnloadLoRA,
)

logger = logging.getLogger(__name__)

_POLL_S = 0.1  # how often the reader checks that the engine process lives while it is quiet
_MAX_BATCH = 64  # step results handed to the event loop in one call


class EngineLost(Exception):
    """The transport found the engine gone (its message is the reason)."""


@dataclass
class _Stream:
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    started: bool = False  # has any output arrived (it left the waiting queue)


class EngineProcessClient:
    """An ``EngineClient`` over one engine process."""

    def __init__(self, engine_args: EngineArgs,
                 make_engine: Callable[[EngineArgs], Any] = make_llm_engine, nice: int = 0) -> None:
        self.engine_args = engine_args
        self._make_engine = make_engine
        self._nice = nice  # added to the engine process's niceness (see run_engine_process)
        self.info: EngineReady | None = None
        self.latest_stats: EngineStats | None = None
        self.dead_reason: str | None = None
        self._streams: dict[str, _Stream] = {}
        self._num_not_started = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats_waiters: dict[int, asyncio.Future] = {}
        self._tokens = itertools.count()
        self._closing = False
        self._proc: Any = None
        self._reader: threading.Thread | None = None

    # --- lifecycle ---

    def start(self, timeout_s: float = 600.0) -> EngineReady:
        """Spawns the engine process and blocks until it has loaded the model."""
        ctx = multiprocessing.get_context("spawn")  # never fork a process that holds torch threads
        self._in_q = ctx.Queue()
        self._out_q = ctx.Queue()
        self._proc = ctx.Process(target=run_engine_process, name="pagoda-engine", daemon=True,
                                 args=(self.engine_args, self._in_q, self._out_q, self._make_engine, self._nice))
        self._proc.start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                msg = self._out_q.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._proc.is_alive():
                    raise RuntimeError(f"engine process exited with code {self._proc.exitcode} while starting"
                                       ) from None
                if time.monotonic() > deadline:
                    self._proc.kill()
                    raise RuntimeError(f"engine did not start within {timeout_s:.0f} s") from None
        if isinstance(msg, EngineFailed):
            self._proc.join(5)
            raise RuntimeError(msg.message)
        assert isinstance(msg, EngineReady), msg
        self.info = msg
        self._reader = threading.Thread(target=self._read_loop, name="pagoda-engine-reader", daemon=True)
        self._reader.start()
        return msg

    def shutdown(self, timeout_s: float = 10.0) -> None:
        if self._proc is None:
            return
        self._closing = True
        if self._proc.is_alive():
            self._in_q.put(Shutdown())
            self._proc.join(timeout_s)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout_s)
        if self._reader is not None:
            self._reader.join(timeout_s)
        self._in_q.cancel_join_thread()
        self._in_q.close()
        self._out_q.close()

    @property
    def alive(self) -> bool:
        return (self.info is not None and self.dead_reason is None and not self._closing
                and self._engine_running())

    # --- the transport (a subclass may carry the same messages another way: pagoda.distributed.ray_replica) ---

    def _send(self, msg: Any) -> None:
        self._in_q.put(msg)

    def _receive(self, timeout_s: float) -> Any | None:
        """The engine's next message, None if none came within ``timeout_s``; raises ``EngineLost``."""
        try:
            return self._out_q.get(timeout=timeout_s)
        except queue.Empty:
            if not self._proc.is_alive():
                raise EngineLost(f"engine process died (exit code {self._proc.exitcode})") from None
            return None
        except (EOFError, OSError) as e:
            raise EngineLost(f"engine connection lost: {e}") from None

    def _engine_running(self) -> bool:
        return self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def num_waiting(self) -> int:
        """Requests accepted by this process that have produced no output yet."""
        return self._num_not_started

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    # --- requests ---

    def _check_alive(self) -> None:
        if not self.alive:
            raise EngineDeadError(self.dead_reason or "engine is not running")

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._streams or self._stats_waiters:
                raise RuntimeError("EngineProcessClient is already serving another event loop")
            self._loop = loop

    async def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                       priority: int = 0, arrival_time: float | None = None,
                       cache_salt: str | None = None, lora_request: LoRARequest | None = None
                       ) -> AsyncGenerator[RequestDelta, None]:
        """Yields the request's deltas until the last one (``finished=True``).

        Raises InvalidRequestError if the engine rejects the request, EngineRequestError if it
        fails inside the engine, EngineDeadError if the engine process dies meanwhile.
        """
        self._check_alive()
        self._bind_loop()
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        stream = _Stream()
        self._streams[request_id] = stream
        self._num_not_started += 1
        finished = False
        try:
            self._send(AddRequest(request_id, list(prompt_token_ids), params,
                                      arrival_time if arrival_time is not None else time.monotonic(), priority,
                                      cache_salt, lora_request))
            pending: Any = None
            while True:
                item = pending if pending is not None else await stream.queue.get()
                pending = None
                if isinstance(item, RequestRejected):
                    finished = True
                    if item.status == 400:
                        raise InvalidRequestError(item.message, item.param)
                    raise EngineRequestError(item.message)
                if isinstance(item, EngineFailed):
                    finished = True
                    raise EngineDeadError(item.message)
                if item.error is not None:
                    finished = True
                    raise EngineRequestError(item.error)
                # deltas that queued up while this reader was busy go out as one (see RequestDelta.merged)
                while not item.finished and not stream.queue.empty():
                    later = stream.queue.get_nowait()
                    if not isinstance(later, RequestDelta) or later.error is not None:
                        pending = later  # handled on its own, next round
                        break
                    item = item.merged(later)
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not stream.started:
                self._num_not_started -= 1
            self._streams.pop(request_id, None)
            if not finished and self.alive:
                self._send(AbortRequest(request_id))

    def abort(self, request_id: str) -> None:
        if self.alive:
            self._send(AbortRequest(request_id))

    def unload_lora(self, lora_int_id: int) -> None:
        if self.alive:
            self._send(UnloadLoRA(lora_int_id))

    async def get_stats(self, timeout_s: float = 30.0) -> EngineStats:
        """Fresh engine stats, taken after every message this process sent before the call."""
        self._check_alive()
        self._bind_loop()
        token = next(self._tokens)
        fut = asyncio.get_running_loop().create_future()
        self._stats_waiters[token] = fut
        try:
            self._send(GetStats(token))
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._stats_waiters.pop(token, None)

    async def get_dashboard(self, since_step: int = -1, since_time: float = 0.0,
                            timeout_s: float = 30.0) -> DashboardSnapshot:
        """A dashboard snapshot, taken after every message this process sent before the call."""
        self._check_alive()
        self._bind_loop()
        token = next(self._tokens)
        fut = asyncio.get_running_loop().create_future()
        self._stats_waiters[token] = fut
        try:
            self._send(GetDashboard(token, since_step, since_time))
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._stats_waiters.pop(token, None)

    # --- the reader thread and the event loop side ---

    def _read_loop(self) -> None:
        while not self._closing:
            try:
                msg = self._receive(_POLL_S)
            except EngineLost as e:
                self._on_dead(str(e))
                return
            if msg is None:
                continue
            # the results that have arrived meanwhile go to the event loop in one call (one wake-up)
            batch: list[StepResult] = []
            lost: EngineLost | None = None
            while isinstance(msg, StepResult) and len(batch) < _MAX_BATCH:
                batch.append(msg)
                try:
                    msg = self._receive(0)
                except EngineLost as e:
                    msg, lost = None, e
            self._forward(batch)
            if lost is not None:
                self._on_dead(str(lost))
                return
            if isinstance(msg, EngineFailed):
                self._on_dead(msg.message)
                return
            if isinstance(msg, StepResult):  # the batch was full
                self._forward([msg])

    def _forward(self, results: list[StepResult]) -> None:
        for result in results:
            if result.stats is not None:
                self.latest_stats = result.stats
        wanted = [r for r in results if r.deltas or r.rejected or r.stats_token is not None
                  or r.dashboard_token is not None]
        if wanted:
            self._call_in_loop(self._dispatch_all, wanted)

    def _call_in_loop(self, fn: Callable, *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop was closed (server shutting down)
            pass

    def _on_dead(self, reason: str) -> None:
        if self._closing:
            return
        logger.error("%s", reason)
        self.dead_reason = reason
        self._call_in_loop(self._fail_all, EngineFailed(reason))

    def _dispatch_all(self, results: list[StepResult]) -> None:
        for result in results:
            self._dispatch(result)

    def _dispatch(self, result: StepResult) -> None:
        for rejected in result.rejected:
            stream = self._streams.get(rejected.request_id)
            if stream is not None:
                stream.queue.put_nowait(rejected)
        for delta in result.deltas:
            stream = self._streams.get(delta.request_id)
            if stream is None:
                continue  # aborted on this side already
            if not stream.started:
                stream.started = True
                self._num_not_started -= 1
            stream.queue.put_nowait(delta)
        if result.stats_token is not None:
            fut = self._stats_waiters.get(result.stats_token)
            if fut is not None and not fut.done():
                fut.set_result(result.stats)
        if result.dashboard_token is not None:
            fut = self._stats_waiters.get(result.dashboard_token)
            if fut is not None and not fut.done():
                fut.set_result(result.dashboard)

    def _fail_all(self, failure: EngineFailed) -> None:
        for stream in self._streams.values():
            stream.queue.put_nowait(failure)
        for fut in self._stats_waiters.values():
            if not fut.done():
                fut.set_exception(EngineDeadError(failure.message))
