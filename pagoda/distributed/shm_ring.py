"""A one-way channel of tensors between two processes of one host: a ring of shared-memory slots.

Pipeline stages pass activations through it. Several slots let a stage run ahead of its
consumer by several micro-batches instead of waiting for each hand-off (the pipeline would
otherwise drain). Same ordering assumption as ``shm_comm``: x86 total store order.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from pagoda.distributed.shm_comm import segment_path, wait_until

_HEADER = 128  # head (written by the sender) and tail (by the receiver) on separate cache lines


def ring_bytes(slots: int, slot_bytes: int) -> int:
    return _HEADER + slots * slot_bytes


def create_ring(name: str, slots: int, slot_bytes: int) -> str:
    path = segment_path(name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, ring_bytes(slots, slot_bytes))
    finally:
        os.close(fd)
    return path


class ShmRing:
    def __init__(self, name: str, slots: int, slot_bytes: int, watchdog: Callable[[], None] | None = None) -> None:
        self.slots, self.slot_bytes = slots, slot_bytes
        fd = os.open(segment_path(name), os.O_RDWR)
        try:
            self._mmap = mmap.mmap(fd, ring_bytes(slots, slot_bytes))
        finally:
            os.close(fd)
        buf = memoryview(self._mmap)
        self._counters = np.ndarray((_HEADER // 8,), dtype=np.int64, buffer=buf)
        self._data = torch.frombuffer(buf, dtype=torch.uint8, offset=_HEADER,
                                      count=slots * slot_bytes).view(slots, slot_bytes)
        self.watchdog = watchdog
        self.wait_seconds = 0.0  # time blocked: for a receiver, the pipeline bubble it sat in

    @property
    def _head(self) -> int:
        return int(self._counters[0])

    @property
    def _tail(self) -> int:
        return int(self._counters[8])

    def _wait(self, ready: Callable[[], bool]) -> None:
        if ready():
            return
        t0 = time.perf_counter()
        wait_until(ready, self.watchdog, sleep_after_s=0.002)
        self.wait_seconds += time.perf_counter() - t0

    def send(self, tensors: list[torch.Tensor]) -> None:
        """Copies the tensors (concatenated bytes) into the next free slot."""
        parts = [t.contiguous().view(-1).view(torch.uint8) for t in tensors]
        nbytes = sum(p.numel() for p in parts)
        if nbytes > self.slot_bytes:
            raise ValueError(f"{nbytes} bytes exceed the ring's {self.slot_bytes}-byte slots")
        head = self._head
        self._wait(lambda: head - self._tail < self.slots)
        slot, off = self._data[head % self.slots], 0
        for p in parts:
            slot[off:off + p.numel()].copy_(p)
            off += p.numel()
        self._counters[0] = head + 1

    def recv(self, shapes: list[tuple[int, ...]], dtype: torch.dtype) -> list[torch.Tensor]:
        """The oldest slot's tensors, copied out (the receiver knows their shapes)."""
        tail = self._tail
        self._wait(lambda: self._head > tail)
        slot, off, out = self._data[tail % self.slots], 0, []
        elem = torch.empty(0, dtype=dtype).element_size()
        for shape in shapes:
            n = int(np.prod(shape)) * elem
            out.append(slot[off:off + n].view(dtype).view(shape).clone())
            off += n
        self._counters[8] = tail + 1
        return out

    def close(self) -> None:
        for view in ("_counters", "_data"):  # drop the views before closing the mapping
            self.__dict__.pop(view, None)
        try:
            self._mmap.close()
        except BufferError:
            pass
