"""Answer times as one separate client sees them, taken while the storm runs.

The storm's own requests are timed by the storm's event loop, which drives hundreds of connections at
once: a 503 that the server sent in a millisecond is read when that loop gets to it. The probe runs in a
process of its own with blocking sockets, sends one small completion at a time on a fresh connection,
and times each answer (connect, first byte, whole response) by its status, so the 503 figure is the
server's and the kernel's, not the storm client's.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import time
from dataclasses import dataclass, field
from typing import Any

_MAX_SAMPLES = 20_000
_TIMEOUT_S = 120.0


@dataclass
class ProbeSample:
    status: int | str  # the HTTP status, or the error's name
    connect_s: float  # until the connection was accepted by the kernel
    first_byte_s: float  # until the first byte of the answer arrived (from the start)
    total_s: float  # until the whole answer arrived


@dataclass
class ProbeResult:
    samples: list[ProbeSample] = field(default_factory=list)

    def times(self, status: int, what: str = "total_s") -> list[float]:
        return [getattr(s, what) for s in self.samples if s.status == status]


class OverloadProbe:
    """``start()`` spawns the probe process; ``stop()`` ends it and returns what it measured.
    It sends ``body`` to ``path`` every ``interval_s`` (one request at a time)."""

    def __init__(self, port: int, path: str, body: dict[str, Any], headers: dict[str, str],
                 interval_s: float = 0.02) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        raw = json.dumps(body).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
                   f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n").encode() + raw
        self._proc = ctx.Process(target=_run, args=(port, request, interval_s, self._stop, send),
                                 name="pagoda-storm-probe", daemon=True)

    def start(self) -> None:
        self._proc.start()

    def stop(self, timeout_s: float = _TIMEOUT_S + 10) -> ProbeResult:
        self._stop.set()
        result = ProbeResult()
        if self._recv.poll(timeout_s):
            result = ProbeResult([ProbeSample(*s) for s in self._recv.recv()])
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        return result


def _run(port: int, request: bytes, interval_s: float, stop: Any, send: Any) -> None:
    samples: list[tuple[int | str, float, float, float]] = []
    while not stop.is_set() and len(samples) < _MAX_SAMPLES:
        samples.append(_one(port, request))
        stop.wait(interval_s)
    send.send(samples)
    send.close()


def _one(port: int, request: bytes) -> tuple[int | str, float, float, float]:
    start = time.perf_counter()
    connect_s = first_s = 0.0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT_S) as sock:
            connect_s = time.perf_counter() - start
            sock.sendall(request)
            chunks = [sock.recv(65536)]
            first_s = time.perf_counter() - start
            while chunks[-1]:  # Connection: close, so the answer ends where the stream does
                chunks.append(sock.recv(65536))
        data = b"".join(chunks)
        status: int | str = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else "no_answer"
    except (OSError, ValueError, IndexError) as e:
        status = type(e).__name__
    return status, connect_s, first_s, time.perf_counter() - start
