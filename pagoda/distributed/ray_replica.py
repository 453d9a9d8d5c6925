"""One data-parallel replica as a Ray actor: an engine and its serving loop, wherever Ray placed it.

The actor runs the same ``EngineLoop`` as the server's engine process, on a thread, between two local
queues; the server's ``RayReplicaClient`` fills the input queue with ``send`` and drains the output
queue with ``poll`` (both remote calls, on the actor's other threads). The engine is built in the
constructor, so the actor is ready (and Ray calls it alive) only once its model is loaded; when Ray
restarts a dead replica it runs the constructor again and the replica comes back with an empty engine.

This module imports Ray only inside ``replica_actor`` (Ray is an optional extra).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pagoda.distributed.ray_cluster import Placement
from pagoda.engine.args import EngineArgs
from pagoda.server.engine_process import EngineLoop, engine_ready, make_llm_engine
from pagoda.server.messages import AddRequest, EngineReady, Shutdown


class ReplicaActor:
    """Hosts one engine. Contract: ``ready()`` answers once the engine is loaded; ``send(msgs, sent_at)``
    queues messages for the engine loop in order (a caller waits for one ``send`` before the next); ``poll``
    returns what the loop produced, waiting up to ``timeout_s`` for the first item."""

    def __init__(self, engine_args: EngineArgs, make_engine: Callable[[EngineArgs], Any] = make_llm_engine) -> None:
        self.engine = make_engine(engine_args)
        self.info = engine_ready(self.engine)
        self._in: queue.Queue = queue.Queue()
        self._out: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="pagoda-replica-loop", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            EngineLoop(self.engine, self._in, self._out).run()  # returns on Shutdown
        finally:
            self.engine.shutdown()

    def ready(self) -> tuple[EngineReady, Placement]:
        import ray

        ctx = ray.get_runtime_context()
        return self.info, Placement(ctx.get_node_id(), ray.util.get_node_ip_address(), os.getpid())

    def send(self, messages: list[Any], sent_at: float) -> None:
        """``sent_at``: the caller's ``time.monotonic()`` when it sent them. Monotonic clocks of two machines
        are unrelated: arrival times are moved onto this one's (the engine compares them with its own)."""
        offset = time.monotonic() - sent_at
        for msg in messages:
            if isinstance(msg, AddRequest):
                msg = replace(msg, arrival_time=msg.arrival_time + offset)
            self._in.put(msg)

    def stop(self, timeout_s: float) -> bool:
        """Stops the loop, which shuts the engine down (its ranks, when parallel); whether it finished."""
        self._in.put(Shutdown())
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def poll(self, timeout_s: float) -> list[Any]:
        items = []
        try:
            items.append(self._out.get(timeout=timeout_s))
        except queue.Empty:
            return items
        while True:
            try:
                items.append(self._out.get_nowait())
            except queue.Empty:
                return items


def replica_actor(max_restarts: int, **placement: Any) -> Any:
    """``ReplicaActor`` as a Ray actor class with its options and ``placement`` (num_cpus, scheduling
    strategy): restarted by Ray up to ``max_restarts`` times; a task in flight when it dies fails (the
    client decides what to retry); three threads, so that ``poll`` can wait while ``send`` and ``ready``
    run."""
    import ray

    return ray.remote(ReplicaActor).options(max_restarts=max_restarts, max_task_retries=0, max_concurrency=3,
                                            **placement)
