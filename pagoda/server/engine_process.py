"""The engine process: owns an LLMEngine and runs it, as vLLM's engine core does.

The loop drains the input queue between steps (so new requests join the very next step
and aborts free their KV blocks at once), runs ``engine.step()`` while there is work,
and sends one ``StepResult`` per iteration. It never dies because of one request: a
rejected ``add_request`` answers that request only, and an exception inside a step fails
the requests that were in flight while the engine goes on serving new ones.

This module stays light (no FastAPI) because the spawned child imports it first.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pagoda.engine.args import EngineArgs
from pagoda.errors import InvalidRequestError
from pagoda.server.dashboard_feed import DashboardFeed
from pagoda.server.delta_tracker import DeltaTracker
from pagoda.server.messages import (
    AbortRequest,
    AddRequest,
    EngineFailed,
    EngineReady,
    GetDashboard,
    GetStats,
    RequestDelta,
    RequestRejected,
    SampleDelta,
    Shutdown,
    StepResult,
    UnloadLoRA,
)
from pagoda.structured.deferred_processor import bind_deferred_processors

if TYPE_CHECKING:
    from pagoda.engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)

_IDLE_POLL_S = 1.0  # how often an idle engine checks that its parent still lives
_STALLED_POLL_S = 0.005  # how long a step that found nothing runnable waits for messages before the next


def make_llm_engine(engine_args: EngineArgs) -> LLMEngine:
    from pagoda.engine.engine_factory import build_engine

    return build_engine(engine_args)


def run_engine_process(engine_args: EngineArgs, in_q: Any, out_q: Any,
                       make_engine: Callable[[EngineArgs], LLMEngine] = make_llm_engine, nice: int = 0) -> None:
    """Entry point of the spawned process: build the engine, announce it, serve until Shutdown,
    then shut the engine down (its worker ranks, when parallel).

    ``nice`` is added to the process's niceness before any thread starts (threads inherit it): where
    CPUs are shared, the HTTP process then runs first when both want a core, so overload answers (503s)
    and streamed tokens are not queued behind the engine's matrix multiplies."""
    if nice:
        os.nice(nice)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine %(levelname)s %(message)s")
    try:
        engine = make_engine(engine_args)
    except BaseException:  # noqa: BLE001 - report any startup failure to the parent, then exit
        out_q.put(EngineFailed("engine failed to start:\n" + traceback.format_exc()))
        return
    out_q.put(engine_ready(engine))
    try:
        EngineLoop(engine, in_q, out_q).run()
    finally:
        engine.shutdown()


def engine_ready(engine: LLMEngine) -> EngineReady:
    """What a started engine announces to the HTTP side."""
    return EngineReady(model_name=engine.model_name, max_model_len=engine.model_config.max_model_len,
                       vocab_size=engine.model_config.vocab_size, pid=os.getpid(),
                       tokenizer=engine.tokenizer, max_lora_rank=_max_lora_rank(engine))


def _max_lora_rank(engine: LLMEngine) -> int | None:
    lora = getattr(engine.runner, "lora", None)
    return None if lora is None else lora.config.max_lora_rank


class EngineLoop:
    def __init__(self, engine: LLMEngine, in_q: Any, out_q: Any) -> None:
        self.engine = engine
        self.in_q = in_q
        self.out_q = out_q
        self.tracker = DeltaTracker()
        self.in_flight: set[str] = set()
        self.dashboard = DashboardFeed(engine)

    def run(self) -> None:
        try:
            while self.run_once():
                pass
        except BaseException:  # noqa: BLE001 - the loop itself broke: tell the parent before dying
            self.out_q.put(EngineFailed("engine loop died:\n" + traceback.format_exc()))
            raise

    def run_once(self) -> bool:
        """One iteration: handle pending messages, step if there is work. False after Shutdown."""
        if not self.engine.has_unfinished_requests():
            wait_s: float | None = _IDLE_POLL_S
        else:  # requests not ready to run (a grammar compiling): wait a little rather than spin
            wait_s = _STALLED_POLL_S if getattr(self.engine, "last_step_idle", False) else None
        messages = self._drain(wait_s)
        if messages is None:
            return False
        result = StepResult()
        for msg in messages:
            if isinstance(msg, Shutdown):
                return False
            self._handle(msg, result)
        if self.engine.has_unfinished_requests():
            self._step(result)
        if messages or result.deltas or result.rejected:
            result.stats = self.engine.get_stats()
            self.out_q.put(result)
        return True

    def _drain(self, wait_s: float | None) -> list[Any] | None:
        """The pending messages, waiting up to ``wait_s`` for a first one (None: not at all);
        None when the parent process is gone."""
        messages: list[Any] = []
        if wait_s is not None:
            try:
                messages.append(self.in_q.get(timeout=wait_s))
            except queue.Empty:
                parent = multiprocessing.parent_process()
                return None if parent is not None and not parent.is_alive() else []
        while True:
            try:
                messages.append(self.in_q.get_nowait())
            except queue.Empty:
                return messages

    def _handle(self, msg: Any, result: StepResult) -> None:
        if isinstance(msg, AddRequest):
            try:
                params = bind_deferred_processors(msg.params, self.engine.tokenizer)  # structured outputs
                self.engine.add_request(msg.request_id, msg.prompt_token_ids, params, priority=msg.priority,
                                        arrival_time=msg.arrival_time, cache_salt=msg.cache_salt,
                                        lora_request=msg.lora_request)
            except InvalidRequestError as e:
                result.rejected.append(RequestRejected(msg.request_id, e.message, e.param, 400))
            except Exception as e:  # noqa: BLE001 - one bad request must not stop the engine
                logger.exception("add_request %s failed", msg.request_id)
                result.rejected.append(RequestRejected(msg.request_id, f"internal error: {e}", None, 500))
            else:
                self.in_flight.add(msg.request_id)
        elif isinstance(msg, AbortRequest):
            if msg.request_id in self.in_flight:
                self.in_flight.discard(msg.request_id)
                self.tracker.forget(msg.request_id)
                try:
                    self.engine.abort_request(msg.request_id)
                except Exception:  # noqa: BLE001
                    logger.exception("abort_request %s failed", msg.request_id)
        elif isinstance(msg, UnloadLoRA):
            self.engine.remove_lora(msg.lora_int_id)
        elif isinstance(msg, GetStats):
            result.stats_token = msg.token
        elif isinstance(msg, GetDashboard):
            result.dashboard = self.dashboard.snapshot(msg.since_step, msg.since_time)
            result.dashboard_token = msg.token
        else:
            logger.error("unknown message %r", msg)

    def _step(self, result: StepResult) -> None:
        start = time.monotonic()
        try:
            outputs = self.engine.step()
        except Exception as e:  # noqa: BLE001
            # We cannot tell which request broke the step: fail those in flight, keep serving.
            logger.exception("engine step failed; failing %d in-flight requests", len(self.in_flight))
            message = f"internal engine error: {type(e).__name__}: {e}"
            for request_id in sorted(self.in_flight):
                try:
                    self.engine.abort_request(request_id)
                except Exception:  # noqa: BLE001
                    logger.exception("abort_request %s failed", request_id)
                self.tracker.forget(request_id)
                result.deltas.append(RequestDelta(
                    request_id=request_id, finished=True, error=message,
                    samples=[SampleDelta(index=0, text="", token_ids=[], finish_reason="error")]))
            self.in_flight.clear()
            return
        self.dashboard.on_step(start, outputs)
        for out in outputs:
            if out.request_id not in self.in_flight:
                continue  # aborted while the step ran
            delta = self.tracker.delta(out)
            if delta is not None:
                result.deltas.append(delta)
            if out.finished:
                self.in_flight.discard(out.request_id)
