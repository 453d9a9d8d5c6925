"""Threads for grammar compilation, with stacks deep enough for llguidance.

llguidance recurses along chains of grammar rules while it compiles; a chain of ~3,000 rules
overflows a default 8 MB thread stack, and a Rust stack overflow kills the whole process (the server,
or the engine with every request in it). Compiles run on these threads instead, whose stack is large
enough for any spec within the server's size limit (a 12,000-rule chain, 277 kB, needs ~0.5 GB; the
memory is reserved, and only touched as deep as a compile goes).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

COMPILE_STACK_BYTES = 1 << 30

_stack_size_lock = threading.Lock()  # threading.stack_size is process-wide: set, start, restore
_on_deep_stack = threading.local()  # .active on CompileExecutor threads


class CompileExecutor(Executor):
    """A fixed set of daemon threads with ``stack_bytes`` stacks, started on first use. ``nice`` is
    added to each thread's own niceness (Linux schedules threads, so this leaves the rest of the
    process as it was): a server's event loop then runs first when it and a compile want the same core."""

    def __init__(self, num_threads: int, name: str, stack_bytes: int = COMPILE_STACK_BYTES, nice: int = 0) -> None:
        self.num_threads, self.name, self.stack_bytes, self.nice = num_threads, name, stack_bytes, nice
        self._work: queue.SimpleQueue[tuple[Future, Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        if kwargs:
            raise TypeError("CompileExecutor.submit takes positional arguments only")
        self._start()
        future: Future = Future()
        self._work.put((future, fn, args))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            for _ in self._threads:
                self._work.put(None)
            threads, self._threads = self._threads, []
        if wait:
            for t in threads:
                t.join()

    def _start(self) -> None:
        with self._lock:
            if self._threads:
                return
            with _stack_size_lock:
                previous = threading.stack_size(self.stack_bytes)
                try:
                    for i in range(self.num_threads):
                        t = threading.Thread(target=self._run, name=f"{self.name}-{i}", daemon=True)
                        t.start()
                        self._threads.append(t)
                finally:
                    threading.stack_size(previous)

    def _run(self) -> None:
        _on_deep_stack.active = True
        if self.nice:
            _lower_thread_priority(self.nice)
        while (item := self._work.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(e)


def _lower_thread_priority(nice: int) -> None:
    """This thread's niceness raised by ``nice`` where threads have their own (Linux); else nothing."""
    if not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass


_fallback = CompileExecutor(1, "pagoda-grammar-deep-stack")


def call_on_deep_stack(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on a deep-stack thread: here when already on one, else on a fallback thread
    (the caller waits)."""
    if getattr(_on_deep_stack, "active", False):
        return fn(*args)
    return _fallback.submit(fn, *args).result()
