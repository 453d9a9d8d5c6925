"""Drives requests at a server: Poisson arrivals at a rate, or a fixed concurrency, or both.

With ``request_rate = inf`` every request is sent at once (bounded by ``max_concurrency``
when given): the fixed-concurrency closed loop. With a finite rate, inter-arrival gaps are
exponential (Poisson process), seeded, and independent of how fast the server answers.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable

from pagoda.bench.openai_request import RequestResult
from pagoda.bench.workloads import BenchRequest

SendFn = Callable[[BenchRequest], Awaitable[RequestResult]]


def arrival_times(n: int, request_rate: float, seed: int = 0) -> list[float]:
    """Offsets (s) from the start at which each request is sent."""
    if math.isinf(request_rate):
        return [0.0] * n
    if request_rate <= 0:
        raise ValueError("request_rate must be positive (or inf)")
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(request_rate)
    return out


async def run_load(requests: list[BenchRequest], send: SendFn, request_rate: float = math.inf,
                   max_concurrency: int | None = None, seed: int = 0,
                   on_done: Callable[[RequestResult], None] | None = None) -> tuple[list[RequestResult], float]:
    """Sends every request on schedule; returns the results in request order and the wall duration."""
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    offsets = arrival_times(len(requests), request_rate, seed)
    start = time.perf_counter()

    async def one(req: BenchRequest, offset: float) -> RequestResult:
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if gate is None:
            result = await send(req)
        else:
            async with gate:
                result = await send(req)
        if on_done is not None:
            on_done(result)
        return result

    results = await asyncio.gather(*(one(r, o) for r, o in zip(requests, offsets)))
    return list(results), time.perf_counter() - start
