"""The idle memory release: runs once per idle period, on a thread of its own, never while an API request is
in flight (so never on the per-request path); and glibc's malloc_trim really returns freed heap pages."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from pagoda.server.idle_memory_release import IdleMemoryRelease

IDLE_S = 0.3
REPO = Path(__file__).resolve().parents[2]


def make_app(calls: list[tuple[int, int]]) -> tuple[FastAPI, list[IdleMemoryRelease]]:
    """An app whose /v1/work takes ``?s=`` seconds; each release records (its thread, requests in flight)."""
    app = FastAPI()
    holder: list[IdleMemoryRelease] = []

    @app.post("/v1/work")
    async def work(s: float = 0.0) -> JSONResponse:
        await asyncio.sleep(s)
        return JSONResponse({"ok": True})

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def release() -> None:
        calls.append((threading.get_ident(), holder[0].active))

    app.add_middleware(IdleMemoryRelease, idle_s=IDLE_S, release=release)
    return app, holder


def test_release_runs_once_per_idle_period_off_the_loop():
    calls: list[tuple[int, int]] = []
    app, holder = make_app(calls)

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get("/health")  # builds the middleware stack; probes are not activity
            holder.append(next(m for m in _middlewares(app) if isinstance(m, IdleMemoryRelease)))
            await asyncio.sleep(2 * IDLE_S)
            assert calls == [], "a release ran with no API request served"
            # requests closer together than idle_s, one of them longer than idle_s: no release meanwhile
            for s in (0.0, IDLE_S * 1.5, 0.0, 0.0):
                assert (await client.post(f"/v1/work?s={s}")).status_code == 200
                await asyncio.sleep(IDLE_S / 3)
            assert calls == [], "a release ran while requests kept coming"
            # several at once: the release waits for the last of them
            await asyncio.gather(*(client.post(f"/v1/work?s={s}") for s in (0.05, IDLE_S * 1.2, 0.1)))
            assert calls == []
            await asyncio.sleep(IDLE_S * 3)
            assert len(calls) == 1, calls
            thread, in_flight = calls[0]
            assert thread != loop_thread and in_flight == 0
            await asyncio.sleep(IDLE_S * 3)
            assert len(calls) == 1, "released again with nothing served since"
            await client.post("/v1/work")
            await asyncio.sleep(IDLE_S * 3)
            assert len(calls) == 2 and calls[1][1] == 0
            assert holder[0].releases == 2

    asyncio.run(scenario())


def _middlewares(app: FastAPI):
    node = app.middleware_stack
    while node is not None:
        yield node
        node = getattr(node, "app", None)


def test_release_free_memory_returns_heap_pages_to_the_os():
    """200 MB of 4 kB objects (glibc heap chunks, not pymalloc arenas) freed while every 100th stays alive, so
    glibc cannot shrink the heap from its top: RSS stays up after the free, and drops after the release."""
    script = textwrap.dedent("""
        import sys
        from pagoda.server.idle_memory_release import release_free_memory

        def rss_mb():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

        base = rss_mb()
        blocks = [bytes(4000) + bytes([i % 256]) for i in range(50_000)]
        kept = blocks[::100]
        peak = rss_mb()
        del blocks
        freed = rss_mb()
        assert release_free_memory()
        print(base, peak, freed, rss_mb(), len(kept))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    base, peak, freed, released, _ = map(float, out.stdout.split())
    assert peak - base > 150, (base, peak)
    assert freed - base > 150, f"glibc already returned the memory at free: {base, peak, freed}"
    assert freed - released > 120, f"the release returned little: {base, peak, freed, released}"

