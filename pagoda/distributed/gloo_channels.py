"""The same channels as ``shm_comm`` / ``shm_ring``, over gloo: for ranks on different hosts.

``GlooWorld`` carries the driver's messages (length, then bytes, to each rank) and the stats
gathers over the whole world; ``GlooLink`` carries a stage's activations to a rank on another host
(``isend``, so the sender runs ahead as with a ring of slots).
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np
import torch
import torch.distributed as dist


class GlooWorld:
    """The driver's messages to every other rank, and the world's gathers. Each rank gets its copy
    point to point (``isend``, tagged apart from activations), so the driver may publish the next
    step while a rank still works on an earlier one, up to ``depth`` messages ahead (a broadcast
    would wait for the slowest rank to join)."""

    _TAG = 1

    def __init__(self, rank: int, world: int, depth: int = 1) -> None:
        self.rank, self.world, self.depth = rank, world, depth
        self._pending: deque = deque()  # (work handles, tensors kept alive until sent)
        self.comm_seconds = 0.0

    def send_message(self, payload: bytes) -> None:
        assert self.rank == 0
        while len(self._pending) >= self.depth:
            for work in self._pending.popleft()[0]:
                work.wait()
        length = torch.tensor([len(payload)], dtype=torch.int64)
        data = torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).copy())
        works = [dist.isend(t, dst=r, tag=self._TAG) for r in range(1, self.world) for t in (length, data)]
        self._pending.append((works, (length, data)))

    def recv_message(self, idle: bool = True) -> bytes:
        n = torch.empty(1, dtype=torch.int64)
        dist.recv(n, src=0, tag=self._TAG)
        data = torch.empty(int(n), dtype=torch.uint8)
        dist.recv(data, src=0, tag=self._TAG)
        return data.numpy().tobytes()

    def all_gather(self, x: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return parts

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        for works, _ in self._pending:
            for work in works:
                work.wait()
        self._pending.clear()


class GlooLink:
    """One direction between two ranks: ``send`` on one, ``recv`` on the other, in order."""

    def __init__(self, peer: int, depth: int = 4) -> None:
        self.peer = peer
        self.depth = depth
        self._pending: deque = deque()  # (work handles, tensors kept alive until sent)
        self.wait_seconds = 0.0

    def send(self, tensors: list[torch.Tensor]) -> None:
        while len(self._pending) >= self.depth:
            for work in self._pending.popleft()[0]:
                work.wait()
        kept = [t.contiguous() for t in tensors]
        self._pending.append(([dist.isend(t, dst=self.peer) for t in kept], kept))

    def recv(self, shapes: list[tuple[int, ...]], dtype: torch.dtype) -> list[torch.Tensor]:
        t0 = time.perf_counter()
        out = [torch.empty(shape, dtype=dtype) for shape in shapes]
        for t in out:
            dist.recv(t, src=self.peer)
        self.wait_seconds += time.perf_counter() - t0
        return out

    def close(self) -> None:
        for works, _ in self._pending:
            for work in works:
                work.wait()
        self._pending.clear()
