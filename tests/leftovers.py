"""What a test session must not leave behind: parallel engines' ``pagoda-ranks-*`` temp folders and
live child processes (read from /proc, so no extra dependency)."""

from __future__ import annotations

import glob
import os


def rank_folders(temp_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(temp_dir, "pagoda-ranks-*")))


def live_children(pid: int) -> list[str]:
    """``pid: command`` of this process's live descendants, less multiprocessing's resource tracker
    (it stays until the interpreter exits, by design)."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone meanwhile
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(entry))
            commands[int(entry)] = command
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        todo += children.get(child, [])
        if "multiprocessing.resource_tracker" not in commands[child]:
            found.append(f"{child}: {commands[child][:120]}")
    return found
