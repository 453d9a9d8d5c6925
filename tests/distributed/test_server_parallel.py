"""Tensor parallelism behind the server's engine process: serves, and a dead rank fails health."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from pagoda import SamplingParams
from pagoda.engine.args import EngineArgs
from pagoda.server.engine_client import EngineDeadError
from pagoda.server.engine_process_client import EngineProcessClient


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def test_tp2_engine_process_and_dead_rank(tiny_llama_dir):
    args = EngineArgs(model=tiny_llama_dir, dtype="float32", num_kv_blocks=64, tensor_parallel_size=2,
                      show_progress=False)
    client = EngineProcessClient(args)
    client.start()
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)

    async def one(request_id: str) -> list[int]:
        tokens: list[int] = []
        async for delta in client.generate(request_id, [5, 6, 7, 8], params):
            tokens += delta.samples[0].token_ids
        return tokens

    try:
        assert len(asyncio.run(one("a"))) == 4
        (worker,) = _children(client.pid)  # rank 1
        os.kill(worker, signal.SIGKILL)
        try:
            asyncio.run(one("b"))
        except EngineDeadError as e:
            assert "rank 1" in str(e)
        deadline = time.monotonic() + 20
        while client.alive and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not client.alive  # /health answers 503
    finally:
        client.shutdown()
