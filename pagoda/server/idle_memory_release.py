"""Gives memory back to the operating system once the server has been idle for a moment.

Under a storm the API process allocates and frees a lot (10 MB bodies, 4 MiB prompts and their token
lists, parsed JSON, compiled grammars on worker threads that each have their own malloc arena). Python
returns what it frees to glibc's malloc, which keeps most of it mapped for reuse: the process's RSS then
stays at the storm's high-water mark although the live objects are back to their baseline. Once no API
request has been in flight for ``idle_s``, ``IdleMemoryRelease`` runs glibc's ``malloc_trim(0)`` (which
returns the free pages of every arena) on a worker thread, once per idle
period; it never runs while a request is being served, and costs the per-request path two counter
updates and a timer.

No ``gc.collect()``: in the dumps of a storm it freed nothing measurable (what the storm frees is freed by
reference counting), and a full collection started from a thread of its own runs other threads' finalizers
there (in the tests' in-process servers it broke a browser test driving Playwright from the main thread).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Scope = dict[str, Any]

_TRACKED_PREFIXES = ("/v1/", "/tokenize", "/detokenize")  # the API; /health and /metrics are cheap probes


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library is another (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim  # a CDLL call releases the GIL while it works
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def release_free_memory() -> bool:
    """Hands the allocator's free pages back to the OS (glibc only). Returns whether ``malloc_trim`` ran."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


class IdleMemoryRelease:
    """ASGI middleware: counts API requests in flight; ``idle_s`` after the last one ended (and none
    began since) it runs ``release`` once on a thread of its own, never on the event loop.
    ``releases`` counts the runs (for tests and logs)."""

    def __init__(self, app: Any, idle_s: float, release: Callable[[], Any] = release_free_memory) -> None:
        self.app = app
        self.idle_s = idle_s
        self.release = release
        self.active = 0
        self.releases = 0
        self._timer: asyncio.TimerHandle | None = None
        self._dirty = False  # a request was served since the last release
        self._running = threading.Lock()  # one release at a time

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_TRACKED_PREFIXES):
            await self.app(scope, receive, send)
            return
        self.active += 1
        self._dirty = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            if self.active == 0:
                self._timer = asyncio.get_running_loop().call_later(self.idle_s, self._on_idle)

    def _on_idle(self) -> None:
        self._timer = None
        if self.active or not self._dirty or not self._running.acquire(blocking=False):
            return  # busy again, nothing served since the last release, or one still running
        self._dirty = False
        threading.Thread(target=self._run_release, name="pagoda-memory-release", daemon=True).start()

    def _run_release(self) -> None:
        try:
            self.release()
            self.releases += 1
        except Exception:  # noqa: BLE001 - returning memory is best effort; never take the server down
            logger.exception("releasing free memory failed")
        finally:
            self._running.release()
