"""Data parallelism: routing policies, and real replicas behind the server's client."""

from __future__ import annotations

import asyncio

from pagoda import LLM, SamplingParams
from pagoda.distributed.router import LeastOutstandingRouter, PrefixAwareRouter, RoundRobinRouter, make_router
from pagoda.engine.args import EngineArgs
from pagoda.server.data_parallel_client import DataParallelClient


def test_round_robin_and_least_outstanding():
    rr = RoundRobinRouter(3)
    assert [rr.choose([], [0, 0, 0]) for _ in range(4)] == [0, 1, 2, 0]
    lo = LeastOutstandingRouter(3)
    assert lo.choose([], [2, 0, 1]) == 1
    assert [lo.choose([], [0, 0, 0]) for _ in range(3)] == [2, 0, 1]  # ties rotate


def test_prefix_aware_sticks_to_the_prefix_until_load_is_uneven():
    router = PrefixAwareRouter(2, block_size=4, max_imbalance=2)
    system = list(range(100, 112))
    first = router.choose(system + [1, 2], [0, 0])
    assert router.choose(system + [3, 4], [0, 1 if first == 1 else 0]) == first
    assert router.choose(system + [5], [3, 0] if first == 0 else [0, 3]) != first  # too loaded: fall back
    assert router.choose(list(range(50, 70)), [0, 0]) in (0, 1)


def _groups(seed: int, groups: int = 3, per_group: int = 4) -> list[list[int]]:
    """Requests sharing a 48-token system prompt per group, each with its own 8-token question."""
    prompts = []
    for g in range(groups):
        system = [(seed * 97 + g * 31 + i * 7) % 380 + 3 for i in range(48)]
        prompts += [system + [(seed + g * 11 + r * 5 + i) % 380 + 3 for i in range(8)] for r in range(per_group)]
    return prompts


def _hit_rate(before, after) -> float:
    return (after.prefix_cache_hits_total - before.prefix_cache_hits_total) / \
        (after.prefix_cache_queries_total - before.prefix_cache_queries_total)


def test_replicas_prefix_routing_beats_round_robin(tiny_llama_dir):
    args = EngineArgs(model=tiny_llama_dir, dtype="float32", num_kv_blocks=128, data_parallel_size=2,
                      show_progress=False)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    client = DataParallelClient(args, policy="round_robin")
    client.start()
    outputs: dict[str, list[int]] = {}

    async def run(prompts: list[list[int]], tag: str) -> None:
        for i, p in enumerate(prompts):  # one after another: each may reuse what the previous cached
            async for delta in client.generate(f"{tag}{i}", p, params):
                outputs.setdefault(f"{tag}{i}", []).extend(delta.samples[0].token_ids)

    try:
        s0 = asyncio.run(client.get_stats())
        asyncio.run(run(_groups(1), "rr"))
        s1 = asyncio.run(client.get_stats())
        client.router = make_router("prefix_aware", 2)
        asyncio.run(run(_groups(2), "pa"))
        s2 = asyncio.run(client.get_stats())
        assert client.alive and sum(client.routed) == 24
    finally:
        client.shutdown()
    rr, pa = _hit_rate(s0, s1), _hit_rate(s1, s2)
    print(f"prefix cache hit rate over 2 replicas: round_robin {rr:.2f}, prefix_aware {pa:.2f}")
    assert pa > rr
    assert client.router.prefix_routed == 9  # all but the first request of each group
    # and the replicas generate what one process does
    llm = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=128, show_progress=False)
    reference = llm.generate(_groups(2), params, use_tqdm=False)
    assert [r.outputs[0].token_ids for r in reference] == [outputs[f"pa{i}"] for i in range(12)]
