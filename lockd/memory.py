"""The daemon's memory: reading a process's RSS, and giving freed C-heap pages back to the kernel.

Small and free of imports beyond the standard library's basics: imported by the daemon, by the floor probe
(``lockd.floor``) and by the benchmarks.
"""

from __future__ import annotations

from typing import Any


def rss_mib(pid: int | str = "self") -> float | None:
    """VmRSS of a process (this one by default), in MiB to 0.1; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None  # a zombie has no VmRSS line


def trim_heap() -> None:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim``; a no-op elsewhere).

    The daemon's memory is mostly long-lived objects plus the free space that imports, the store client's
    start-up and bursts of requests leave behind in glibc's arenas (0.8 MiB measured after start-up on RADOS,
    1.8 MiB on the file store); glibc returns only the top of the main heap by itself. Takes well under a
    millisecond here (0.2 ms the first time, 0.01 ms after)."""
    global _libc
    if _libc is None:
        import ctypes

        try:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
            _libc.malloc_trim  # noqa: B018 - glibc only: fail here, once, not at every call
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_libc: Any = None
