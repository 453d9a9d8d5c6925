"""200 concurrent streams on loopback: all finish, none loses or duplicates a token, every block returns."""

from __future__ import annotations

import asyncio

from live_server import MODEL

N = 200


def test_200_concurrent_streams_match_greedy_results(server):
    prompts = [f"Request {i}: the quick brown fox number {i * 7919 % 1000}" for i in range(N)]

    async def main():
        client = server.async_openai(timeout=120)

        async def whole(p):
            r = await client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0)
            return r.choices[0].text, r.usage.completion_tokens

        async def streamed(p):
            parts, usage = [], None
            stream = await client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0,
                                                     stream=True, stream_options={"include_usage": True})
            async for chunk in stream:
                parts.extend(c.text for c in chunk.choices)
                usage = chunk.usage or usage
            return "".join(parts), usage.completion_tokens

        expected = await asyncio.gather(*(whole(p) for p in prompts))
        got = await asyncio.gather(*(streamed(p) for p in prompts))
        await client.close()
        return expected, got

    expected, got = asyncio.run(main())
    assert len(got) == N
    mismatches = [i for i in range(N) if got[i] != expected[i]]
    assert not mismatches, [(prompts[i], expected[i], got[i]) for i in mismatches[:3]]
    assert sum(n for _, n in got) > N  # they really generated

    server.wait_idle()
    stats = asyncio.run_coroutine_threadsafe(server.client.get_stats(), server.loop).result(30)
    # no block is held by a request: each is free or an unreferenced prefix-cache block (evictable)
    assert stats.kv_cache_usage == 0.0
    assert stats.num_running == stats.num_waiting == 0
