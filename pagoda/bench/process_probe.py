"""What a local server process holds, read from /proc (Linux): its pid by listening port, its children,
open file descriptors, resident memory and the connections open on its port."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessUsage:
    pid: int
    fds: int
    rss_bytes: int


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` on this host (one we may inspect), else None."""
    inodes = {_inode(line) for line in _tcp_lines() if _local_port(line) == port and line.split()[3] == "0A"}
    inodes.discard(None)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                    return int(proc.name)
        except (PermissionError, FileNotFoundError, ProcessLookupError):
            continue
    return None


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def usage(pid: int) -> ProcessUsage | None:
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rss_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return ProcessUsage(pid, fds, rss_kb * 1024)


def established_connections(port: int) -> int:
    """TCP connections in state ESTABLISHED whose local port is ``port`` (the server's side of each)."""
    return sum(1 for line in _tcp_lines() if _local_port(line) == port and line.split()[3] == "01")


def _tcp_lines() -> list[str]:
    lines: list[str] = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines += Path(name).read_text().splitlines()[1:]
        except FileNotFoundError:
            pass
    return lines


def _local_port(line: str) -> int:
    return int(line.split()[1].rsplit(":", 1)[1], 16)


def _inode(line: str) -> int | None:
    fields = line.split()
    return int(fields[9]) if len(fields) > 9 else None
