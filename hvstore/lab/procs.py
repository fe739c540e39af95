"""Facts about processes read from /proc: alive (a zombie counts as dead), RSS, descendants."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def alive(pid: int | None) -> bool:
    """True if ``pid`` runs and is not a zombie (PID 1 here reaps orphans only every 1-2 s)."""
    if not pid:
        return False
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot: with the pid, identifies a process across pid reuse."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return 0  # kernel threads and zombies have no VmRSS line


def children(pid: int) -> list[int]:
    """Live direct children of ``pid``, oldest first (a subreaper's children include adopted orphans)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and fields[0] not in ("Z", "X") and int(fields[1]) == pid:
                found.append((int(fields[19]), int(entry)))
    return [child for _, child in sorted(found)]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, children first."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and fields[0] not in ("Z", "X"):
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    queue = [pid]
    while queue:
        for child in parents.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found
