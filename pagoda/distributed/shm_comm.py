"""Collectives for the ranks of one host through a shared-memory segment.

gloo on loopback costs 0.5–1.6 ms a call on this machine and a decode step makes about 60 of
them; here a call is a copy into this rank's slot, a flag write, a wait for the peers' flags and
a sum over the slots (as vLLM's CPU backend does). Every rank sums the slots in rank order, so all
ranks hold bit-identical results.

Layout: a control page of int64 counters (each on its own cache line), a ring of message slots
for the driver's broadcasts (with steps in flight the driver publishes the next step while a later
stage still works on an earlier one, so it must not wait for every rank to have read the previous
message), then two exchange areas (alternated by call parity) of ``world`` slots each.
A rank that writes call k+2's data into an area has seen every peer arrive at call k+1, so every
peer has finished reading call k from it: two areas need no second barrier per call.

The ordering relies on x86's total store order (data is stored before the flag that publishes
it); other hosts should use gloo or NCCL.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable

import numpy as np
import torch

_LINE = 8  # int64s per cache line
_CONTROL_BYTES = 4096


def segment_path(name: str) -> str:
    # a file under /dev/shm, not multiprocessing.shared_memory: its resource tracker would unlink
    # the segment when the first attached process exits
    return os.path.join("/dev/shm", name)


def segment_bytes(world: int, slot_bytes: int, message_bytes: int, message_slots: int = 1) -> int:
    return _CONTROL_BYTES + message_slots * message_bytes + 2 * world * slot_bytes


def create_segment(name: str, world: int, slot_bytes: int = 8 << 20, message_bytes: int = 4096,
                   message_slots: int = 1) -> str:
    """Creates the zeroed segment (pages are only backed once touched); the creator unlinks it."""
    path = segment_path(name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, segment_bytes(world, slot_bytes, message_bytes, message_slots))
    finally:
        os.close(fd)
    return path


_SLEEP_AFTER_S = 0.002  # within a step: spin, then yield, then sleep (ranks may outnumber free cores)
_IDLE_SLEEP_AFTER_S = 0.0005  # a worker waiting for the next step should not hold a core


def wait_until(ready: Callable[[], bool], watchdog: Callable[[], None] | None, sleep_after_s: float) -> None:
    """Spins briefly, yields the core, then sleeps in short naps: a spinning rank on an oversubscribed
    host takes CPU time from the rank it waits for. Calls ``watchdog`` about once a second."""
    spins = 0
    start = time.monotonic()
    next_check = start + 1.0
    nap = 0.0
    while not ready():
        spins += 1
        if spins < 64:
            continue
        if nap:
            time.sleep(nap)
        else:
            os.sched_yield()
        if nap or spins % 64 == 0:
            now = time.monotonic()
            if not nap and now - start > sleep_after_s:
                nap = 0.0005 if sleep_after_s < 0.001 else 0.0001  # idle workers nap longer
            if now >= next_check:
                next_check = now + 1.0
                if watchdog is not None:
                    watchdog()


class PeerLost(BaseException):
    """A peer rank died. Not an ``Exception``: the engine's per-step error handling must not swallow
    it, because no later step can run; it ends the engine (the server's health check then fails)."""


class ShmCommunicator:
    def __init__(self, name: str, rank: int, world: int, slot_bytes: int = 8 << 20, message_bytes: int = 4096,
                 watchdog: Callable[[], None] | None = None, message_slots: int = 1) -> None:
        """Attaches to the segment ``create_segment`` made with the same sizes."""
        self.name, self.rank, self.world = name, rank, world
        self.slot_bytes, self.message_bytes, self.message_slots = slot_bytes, message_bytes, message_slots
        size = segment_bytes(world, slot_bytes, message_bytes, message_slots)
        fd = os.open(segment_path(name), os.O_RDWR)
        try:
            self._mmap = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        buf = memoryview(self._mmap)
        self._control = np.ndarray((_CONTROL_BYTES // 8,), dtype=np.int64, buffer=buf)
        self._message = np.ndarray((message_slots, message_bytes), dtype=np.uint8, buffer=buf,
                                   offset=_CONTROL_BYTES)
        areas = torch.frombuffer(buf, dtype=torch.uint8, offset=_CONTROL_BYTES + message_slots * message_bytes,
                                 count=2 * world * slot_bytes)
        self._areas = areas.view(2, world, slot_bytes)
        self._calls = 0  # exchanges done by this rank
        self._messages = 0  # broadcasts seen by this rank
        self.watchdog = watchdog
        self.comm_seconds = 0.0  # time inside collectives (waits included): the metrics' communication share

    # control counters: exchange arrivals per rank, the message sequence, message acks per rank
    def _arrived(self, r: int) -> int:
        return int(self._control[_LINE * r])

    def _set_arrived(self, value: int) -> None:
        self._control[_LINE * self.rank] = value

    @property
    def _msg_seq_index(self) -> int:
        return _LINE * (2 * self.world)

    def _ack_index(self, r: int) -> int:
        return _LINE * (self.world + r)

    # -- waiting -----------------------------------------------------------------------
    def _wait(self, ready: Callable[[], bool], idle: bool = False) -> None:
        wait_until(ready, self.watchdog, sleep_after_s=_IDLE_SLEEP_AFTER_S if idle else _SLEEP_AFTER_S)

    # -- exchange: every rank contributes a chunk, every rank reads all chunks ----------
    def _exchange(self, chunk: torch.Tensor) -> torch.Tensor:
        """Publishes ``chunk`` (flat, at most one slot) and returns the [world, n] bytes view of all ranks'."""
        self._calls += 1
        area = self._areas[self._calls % 2]
        nbytes = chunk.numel() * chunk.element_size()
        area[self.rank, :nbytes].copy_(chunk.view(torch.uint8))
        self._set_arrived(self._calls)
        calls = self._calls
        self._wait(lambda: all(self._arrived(r) >= calls for r in range(self.world)))
        return area[:, :nbytes]

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks."""
        t0 = time.perf_counter()
        flat = x.view(-1) if x.is_contiguous() else x.reshape(-1)
        step = self.slot_bytes // x.element_size()
        for off in range(0, flat.numel(), step):
            part = flat[off:off + step]
            slots = self._exchange(part).view(x.dtype)
            torch.add(slots[0], slots[1], out=part)  # rank order: the same sum on every rank
            for r in range(2, self.world):
                part.add_(slots[r])
        if not x.is_contiguous():
            x.copy_(flat.view(x.shape))
        self.comm_seconds += time.perf_counter() - t0
        return x

    def all_gather(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``x`` (same shape on every rank), in rank order."""
        t0 = time.perf_counter()
        flat = x.contiguous().view(-1)
        outs = [torch.empty_like(flat) for _ in range(self.world)]
        step = self.slot_bytes // x.element_size()
        for off in range(0, flat.numel(), step):
            slots = self._exchange(flat[off:off + step]).view(x.dtype)
            for r in range(self.world):
                outs[r][off:off + step].copy_(slots[r])
        self.comm_seconds += time.perf_counter() - t0
        return [o.view(x.shape) for o in outs]

    def barrier(self) -> None:
        self._exchange(torch.zeros(1, dtype=torch.uint8))

    # -- messages: the driver (rank 0) to every other rank --------------------------------
    def send_message(self, payload: bytes) -> None:
        """Rank 0 publishes ``payload``; waits only while its slot holds a message some rank has
        not read yet (``message_slots`` back)."""
        assert self.rank == 0
        if len(payload) + 8 > self.message_bytes:
            raise ValueError(f"message of {len(payload)} bytes exceeds the {self.message_bytes}-byte area")
        number = self._messages + 1
        freed = number - self.message_slots  # the message this slot held last
        self._wait(lambda: all(self._control[self._ack_index(r)] >= freed for r in range(1, self.world)))
        slot = self._message[(number - 1) % self.message_slots]
        slot[:8] = np.frombuffer(np.int64(len(payload)).tobytes(), dtype=np.uint8)
        slot[8:8 + len(payload)] = np.frombuffer(payload, dtype=np.uint8)
        self._messages = number
        self._control[self._msg_seq_index] = number

    def recv_message(self, idle: bool = True) -> bytes:
        """A worker's next message from rank 0 (blocks, sleeping while the engine is idle)."""
        want = self._messages + 1
        self._wait(lambda: self._control[self._msg_seq_index] >= want, idle=idle)
        slot = self._message[(want - 1) % self.message_slots]
        n = int(slot[:8].view(np.int64)[0])
        payload = slot[8:8 + n].tobytes()
        self._messages = want
        self._control[self._ack_index(self.rank)] = want
        return payload

    def close(self) -> None:
        for view in ("_control", "_message", "_areas"):  # drop the views before closing the mapping
            self.__dict__.pop(view, None)
        try:
            self._mmap.close()
        except BufferError:  # a tensor view still alive; the mapping goes with the process
            pass
