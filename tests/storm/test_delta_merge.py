"""A stream that fell behind takes the deltas queued for it as one: nothing lost, nothing reordered.

Merging is what keeps the HTTP process's per-token work from growing with its lag under a storm; the
merged delta must carry exactly what the separate ones did."""

from __future__ import annotations

import asyncio
import itertools
import random

from pagoda.outputs import Logprob, RequestMetrics
from pagoda.sampling_params import SamplingParams
from pagoda.server.engine_process_client import EngineProcessClient
from pagoda.server.messages import RequestDelta, SampleDelta, StepResult


def lp(token: int) -> dict:
    return {token: Logprob(logprob=-0.5, rank=1, decoded_token=str(token))}


def deltas_for(rng: random.Random, n: int, steps: int) -> list[RequestDelta]:
    """A request of ``n`` samples over ``steps`` deltas: random texts, ids and logprobs, each sample
    finishing at its own step, the request with the last."""
    ends = [rng.randrange(1, steps + 1) for _ in range(n)]
    ends[rng.randrange(n)] = steps
    out = []
    for step in range(1, steps + 1):
        samples = []
        for i in range(n):
            if step > ends[i]:
                continue
            ids = [rng.randrange(100) for _ in range(rng.randrange(0, 3))]
            samples.append(SampleDelta(index=i, text="".join(chr(97 + t % 26) for t in ids), token_ids=ids,
                                       logprobs=[lp(t) for t in ids], cumulative_logprob=-float(step),
                                       finish_reason="length" if step == ends[i] else None,
                                       stop_reason=None))
        out.append(RequestDelta("r", samples, finished=step == steps,
                                prompt_logprobs=[None, lp(1)] if step == 1 else None,
                                metrics=RequestMetrics(arrival_time=1.0) if step == steps else None,
                                num_cached_tokens=16))
    return out


def flatten(deltas: list[RequestDelta]) -> dict:
    """Per sample: the text, ids and logprobs joined, and how it ended; the request's end."""
    samples: dict[int, dict] = {}
    for d in deltas:
        for s in d.samples:
            got = samples.setdefault(s.index, {"text": "", "ids": [], "lps": [], "finish": None})
            assert got["finish"] is None, "a sample went on after it finished"
            got["text"] += s.text
            got["ids"] += s.token_ids
            got["lps"] += s.logprobs or []
            got["finish"] = s.finish_reason
    last = deltas[-1]
    prompt = [d.prompt_logprobs for d in deltas if d.prompt_logprobs is not None]
    return {"samples": samples, "finished": last.finished, "metrics": last.metrics, "prompt": prompt}


def test_merged_deltas_carry_what_the_separate_ones_did():
    rng = random.Random(0)
    for _ in range(200):
        deltas = deltas_for(rng, n=rng.randrange(1, 4), steps=rng.randrange(1, 8))
        cut = sorted(rng.sample(range(1, len(deltas)), rng.randrange(0, len(deltas)))) if len(deltas) > 1 else []
        groups = [deltas[a:b] for a, b in itertools.pairwise([0, *cut, len(deltas)])]
        merged = []
        for group in groups:
            m = group[0]
            for d in group[1:]:
                m = m.merged(d)
            merged.append(m)
        assert flatten(merged) == flatten(deltas)


def test_a_reader_that_fell_behind_gets_one_merged_delta():
    """Through the client's own path: five steps' results queued before the reader looks, read as one."""
    client = EngineProcessClient(engine_args=None)  # type: ignore[arg-type]  (no engine process: the test
    # plays its part, queueing the results a reader that fell behind finds waiting)

    class Queue:
        def __init__(self) -> None:
            self.items: list = []

        def put(self, item) -> None:
            self.items.append(item)

    client._in_q = Queue()
    client.info = object()  # type: ignore[assignment]

    class Alive:
        @staticmethod
        def is_alive() -> bool:
            return True

    client._proc = Alive()
    deltas = deltas_for(random.Random(1), n=2, steps=5)

    async def read() -> list[RequestDelta]:
        got = []
        gen = client.generate("r", [1, 2, 3], SamplingParams(max_tokens=8))
        first = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0)  # the request is registered and waits for its first delta
        client._dispatch_all([StepResult(deltas=[d]) for d in deltas])
        got.append(await first)
        async for d in gen:
            got.append(d)
        return got

    got = asyncio.run(read())
    assert len(got) == 1 and got[0].finished
    assert flatten(got) == flatten(deltas)
    assert client._num_not_started == 0 and not client._streams
