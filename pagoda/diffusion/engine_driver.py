"""A thread that owns a DiffusionEngine, so requests from many callers share its model forwards.

    driver = EngineDriver(engine)
    samples = driver.run([ImageRequest(...), ...])      # blocks; callable from any number of threads

The engine is single-threaded; callers only hand their requests to an inbox and wait on a future. The driver
thread moves new requests into the engine between steps, so a request arriving while another is mid-way joins
the next batched forward (continuous batching across callers: HTTP requests, CLI, benchmark). A caller's
result is the same as running its requests alone, since every request has its own seed and generator.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from pagoda.diffusion.engine import DiffusionEngine, ImageRequest


@dataclass
class _Submission:
    requests: list[ImageRequest]
    future: Future
    remaining: set[str] = field(default_factory=set)
    results: dict[str, torch.Tensor] = field(default_factory=dict)


class EngineDriver:
    def __init__(self, engine: DiffusionEngine):
        self.engine = engine
        self._cv = threading.Condition()
        self._inbox: list[_Submission] = []
        self._by_request: dict[str, _Submission] = {}
        self._thread: threading.Thread | None = None

    @property
    def queued(self) -> int:
        """Submissions handed in but not yet moved into the engine."""
        with self._cv:
            return len(self._inbox)

    def submit(self, requests: list[ImageRequest]) -> Future:
        """Queue requests; the future resolves to request id -> final sample (or the error that stopped them)."""
        sub = _Submission(list(requests), Future(), {r.request_id for r in requests})
        if not requests:
            sub.future.set_result({})
            return sub.future
        with self._cv:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="pagoda-diffusion", daemon=True)
                self._thread.start()
            self._inbox.append(sub)
            self._cv.notify()
        return sub.future

    def run(self, requests: list[ImageRequest]) -> dict[str, torch.Tensor]:
        return self.submit(requests).result()

    def _admit(self, sub: _Submission) -> None:
        """Adds the submission's requests, all or none: a bad one fails its own submission only."""
        try:
            ids: set[str] = set()
            for r in sub.requests:
                if r.request_id in self._by_request or r.request_id in ids:
                    raise ValueError(f"request id {r.request_id!r} is already running")
                ids.add(r.request_id)
                self.engine.check_request(r)  # the sampler and step count
        except Exception as e:  # noqa: BLE001
            sub.future.set_exception(e)
            return
        for r in sub.requests:
            self.engine.add_request(r)
            self._by_request[r.request_id] = sub

    def _fail_all(self, error: BaseException) -> None:
        self.engine.abort_all()
        for sub in {id(s): s for s in self._by_request.values()}.values():
            if not sub.future.done():
                sub.future.set_exception(error)
        self._by_request.clear()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._inbox and not self.engine.has_unfinished():
                    self._cv.wait()
                inbox, self._inbox = self._inbox, []
            for sub in inbox:
                self._admit(sub)
            if not self.engine.has_unfinished():
                continue
            try:
                finished = self.engine.step()
            except Exception as e:  # noqa: BLE001  (the model failed: fail everyone in flight, serve later callers)
                self._fail_all(e)
                continue
            except BaseException as e:  # the thread ends (a later submit starts another); no caller waits forever
                self._fail_all(e)
                raise
            for rid, x in finished.items():
                sub = self._by_request.pop(rid)
                sub.results[rid] = x
                sub.remaining.discard(rid)
                if not sub.remaining:
                    sub.future.set_result(sub.results)
