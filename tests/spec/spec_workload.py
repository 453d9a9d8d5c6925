"""The random workload the speculative engine tests share: arrivals, aborts and mixed sampling
parameters on a small KV pool, with the pool's integrity checked after every step."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from pagoda import SamplingParams


def run_random_workload(engine: Any, prompts: list[list[int]], seed: int,
                        after_step: Callable[[Any], None] | None = None) -> None:
    """60 steps of random arrivals (temperature 0 or 0.9, max_tokens 1-24, n 1 or 2) and aborts,
    then steps until every request ends (bounded: a livelock fails instead of hanging); after every
    step ``check_integrity`` and ``after_step(engine)``."""
    rng = random.Random(seed)
    prompts = list(prompts)
    live: list[str] = []

    def step() -> None:
        engine.step()
        engine.check_integrity()
        if after_step is not None:
            after_step(engine)

    for i in range(60):
        if prompts and rng.random() < 0.4:
            rid = f"r{i}"
            engine.add_request(rid, prompts.pop(), SamplingParams(
                temperature=rng.choice([0, 0.9]), max_tokens=rng.randint(1, 24), ignore_eos=True,
                n=rng.choice([1, 1, 2])))
            live.append(rid)
        if live and rng.random() < 0.05:
            engine.abort_request(live.pop(rng.randrange(len(live))))
        step()
    for _ in range(2000):
        if not engine.has_unfinished_requests():
            break
        step()
    assert not engine.has_unfinished_requests()
