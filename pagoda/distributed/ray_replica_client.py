"""The server's handle on one replica actor (``ray_replica.ReplicaActor``): an ``EngineProcessClient``
whose messages travel as Ray calls instead of process queues.

Two threads carry them: a sender forwards queued messages in order, one ``send`` call at a time (each
call carries every message queued meanwhile), and the reader long-polls ``poll``. When the actor dies,
every request in flight on it fails at once (``EngineDeadError`` naming the replica and its node) and
the replica counts as down; the reader then waits for Ray to restart the actor (its model loaded again)
and the replica serves again. Once Ray has used up the restarts the replica stays down.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from pagoda.distributed.ray_cluster import Placement, import_ray
from pagoda.distributed.ray_replica import replica_actor
from pagoda.engine.args import EngineArgs
from pagoda.server.engine_process import make_llm_engine
from pagoda.server.engine_process_client import EngineLost, EngineProcessClient
from pagoda.server.messages import EngineReady

logger = logging.getLogger(__name__)

_CALL_SLACK_S = 30.0  # beyond a call's own wait: how long a live actor may take to answer


class RayReplicaClient(EngineProcessClient):
    """Replica ``index`` of a data-parallel server, an actor in bundle ``index`` of ``placement_group``."""

    def __init__(self, engine_args: EngineArgs, index: int, placement_group: Any, max_restarts: int,
                 restart_timeout_s: float, make_engine: Callable[[EngineArgs], Any] = make_llm_engine) -> None:
        super().__init__(engine_args, make_engine)
        self.index = index
        self._pg = placement_group
        self._max_restarts = max_restarts
        self._restart_timeout_s = restart_timeout_s
        self.placement: Placement | None = None
        self.restarts = 0  # times this replica came back after its actor died
        self.lost_at: float | None = None  # time.monotonic() when it was last found dead
        self.back_at: float | None = None  # and when it served again
        self._actor: Any = None
        self._outbox: list[Any] = []
        self._send_q: queue.Queue = queue.Queue()
        self._sender: threading.Thread | None = None

    @property
    def name(self) -> str:
        where = f" on {self.placement.node_ip}" if self.placement is not None else ""
        return f"replica {self.index}{where}"

    # --- lifecycle ---

    def start(self, timeout_s: float = 600.0) -> EngineReady:
        ray = import_ray()
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = self._pg.bundle_specs[self.index]
        self._actor = replica_actor(
            self._max_restarts, num_cpus=bundle.get("CPU", 0), num_gpus=bundle.get("GPU", 0),
            scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=self.index),
        ).remote(self.engine_args, self._make_engine)
        try:
            info, self.placement = ray.get(self._actor.ready.remote(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.kill(self._actor, no_restart=True)
            raise RuntimeError(f"replica {self.index} did not start within {timeout_s:.0f} s") from None
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(f"replica {self.index} failed to start: {e}") from None
        self.info = info
        self._sender = threading.Thread(target=self._send_loop, name=f"pagoda-replica{self.index}-sender",
                                        daemon=True)
        self._sender.start()
        self._reader = threading.Thread(target=self._read_loop, name=f"pagoda-replica{self.index}-reader",
                                        daemon=True)
        self._reader.start()
        return info

    def shutdown(self, timeout_s: float = 10.0) -> None:
        if self._actor is None or self._closing:
            return
        self._closing = True
        ray = import_ray()
        try:  # the engine loop stops and shuts the engine down; then the actor goes
            ray.get(self._actor.stop.remote(timeout_s), timeout=timeout_s + _CALL_SLACK_S)
        except Exception:  # noqa: BLE001 - already dead or unreachable: kill is enough
            pass
        ray.kill(self._actor, no_restart=True)
        for t in (self._sender, self._reader):
            if t is not None:
                t.join(timeout_s)

    @property
    def pid(self) -> int | None:
        return self.placement.pid if self.placement is not None else None

    # --- the transport ---

    def _engine_running(self) -> bool:
        return True  # a lost actor is noticed by _receive (dead_reason)

    def _send(self, msg: Any) -> None:
        self._send_q.put(msg)

    def _send_loop(self) -> None:
        ray = import_ray()
        while not self._closing:
            try:
                batch = [self._send_q.get(timeout=0.1)]
            except queue.Empty:
                continue
            while True:
                try:
                    batch.append(self._send_q.get_nowait())
                except queue.Empty:
                    break
            try:
                ray.get(self._actor.send.remote(batch, time.monotonic()), timeout=_CALL_SLACK_S)
            except Exception as e:  # noqa: BLE001 - the reader notices a lost actor and fails its requests
                logger.debug("%s: send failed: %s", self.name, e)

    def _receive(self, timeout_s: float) -> Any | None:
        if self._outbox:
            return self._outbox.pop(0)
        if timeout_s <= 0:  # the last poll took everything the actor had: a call now would come back empty
            return None
        ray = import_ray()
        try:
            self._outbox = ray.get(self._actor.poll.remote(timeout_s), timeout=timeout_s + _CALL_SLACK_S)
        except ray.exceptions.RayError as e:
            if self._closing:
                return None
            raise EngineLost(f"{self.name} was lost ({type(e).__name__}: {_first_line(e)})") from None
        return self._outbox.pop(0) if self._outbox else None

    def _read_loop(self) -> None:
        while not self._closing:
            super()._read_loop()  # returns once the actor is lost (its requests failed) or on shutdown
            if self._closing:
                return
            self.lost_at = time.monotonic()
            self.latest_stats = None  # the lost engine's; the restarted one starts from zero
            if not self._await_restart():
                return

    def _await_restart(self) -> bool:
        """Waits for Ray to bring the actor back; False when it stays dead (restarts used up)."""
        ray = import_ray()
        while not self._send_q.empty():  # messages for the requests that just failed
            self._send_q.get_nowait()
        self._outbox = []
        deadline = time.monotonic() + self._restart_timeout_s
        while not self._closing and time.monotonic() < deadline:
            try:
                info, placement = ray.get(self._actor.ready.remote(), timeout=5.0)
            except ray.exceptions.ActorDiedError as e:  # this call saw the death, or the actor is gone for good
                if self._actor_state() != "DEAD" and not e.actor_init_failed:
                    time.sleep(0.5)
                    continue
                self.dead_reason = f"{self.name} is dead for good ({_first_line(e)})"
                logger.error("%s", self.dead_reason)
                return False
            except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
                continue
            self.info, self.placement = info, placement
            self.restarts += 1
            self.back_at = time.monotonic()
            self.dead_reason = None
            logger.warning("%s is back (restart %d, %.1f s after it was lost)", self.name, self.restarts,
                           self.back_at - (self.lost_at or self.back_at))
            return True
        if not self._closing:
            self.dead_reason = f"{self.name} did not come back within {self._restart_timeout_s:.0f} s"
            logger.error("%s", self.dead_reason)
        return False


    def _actor_state(self) -> str | None:
        """The actor's state in Ray's control store ("ALIVE", "RESTARTING", "DEAD", ...), None if unknown."""
        try:
            from ray._private.state import actors  # Ray's own debugging view of its actor table

            return actors(actor_id=self._actor._actor_id.hex()).get("State")
        except Exception:  # noqa: BLE001 - a private API: without it, keep waiting until the deadline
            return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
