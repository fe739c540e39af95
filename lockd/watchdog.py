"""lockd's watchdog: a separate small process that kills owners when lockd itself cannot.

lockd self-fences from inside (its own watchdog task), which does nothing if lockd is killed (-9), frozen
or hung in the kernel. Then its owners would keep writing after another host took their leases over (on
stores without data-path fencing nothing else stops them). This process watches lockd's persisted state
(``<state_dir>/state.json``, rewritten after every acknowledged renewal, and one file per held lease under
``<state_dir>/leases/``) and applies the same rule from
outside: once a lockspace's deadline (start of the last acknowledged renewal + TTL - margin, on the
system-wide monotonic clock) has passed, every owner of that lockspace's leases gets SIGKILL (through a
pidfd, after checking its start time). A lockd restarted in time renews before the deadline and nobody is
killed; one restarted late kills them itself anyway.

``lockd serve`` starts it (``ensure_running``) in its own session, so it outlives lockd; it exits once no
lockd runs for its state directory and no lease is left, or when the directory is removed.
Run by hand: ``python -m lockd.watchdog STATE_DIR``.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lockd.owners import ProcessHandle, ProcessRef
from lockd.state import STATE_FILE, boot_id, read_lease_states

LOCK_FILE = "watchdog.lock"
CHECK_INTERVAL_S = 0.05


def overdue_spaces(state: dict[str, Any], now: float) -> set[str]:
    """Lockspaces whose self-fence deadline has passed at ``now`` (pure)."""
    if state.get("boot_id") != boot_id():
        return set()  # monotonic times of another boot mean nothing; those processes are gone anyway
    after_s = state.get("self_fence_after_s")
    if not isinstance(after_s, int | float):
        return set()
    overdue = set()
    for name, space in state.get("spaces", {}).items():
        last = space.get("last_acked_start")
        if isinstance(last, int | float) and now >= last + after_s:
            overdue.add(name)
    return overdue


def overdue_owners(state: dict[str, Any], leases: list[dict[str, Any]], now: float) -> list[ProcessRef]:
    """Owners of the leases held in overdue lockspaces (pure)."""
    overdue = overdue_spaces(state, now)
    owners: set[ProcessRef] = set()
    for lease in leases:
        if lease.get("lockspace") in overdue:
            owners.update(ProcessRef.from_json(p) for p in lease.get("owners", []))
    return sorted(owners)


def daemon_alive(state: dict[str, Any]) -> bool:
    daemon = state.get("daemon")
    return daemon is not None and ProcessRef.from_json(daemon).alive()


def kill(owners: list[ProcessRef]) -> list[int]:
    killed = []
    for owner in owners:
        try:
            handle = ProcessHandle(owner)
        except (ProcessLookupError, OSError):
            continue  # gone already, or its pid now belongs to another process
        handle.kill()
        handle.close()
        killed.append(owner.pid)
    return killed


def run(state_dir: Path) -> None:
    lock = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another watchdog watches this directory
    idle_since: float | None = None
    while True:
        try:
            state = json.loads((state_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            if not state_dir.exists():
                return
            state = {}
        except ValueError:
            state = {}  # never seen (written by rename), but a damaged file must not stop the watchdog
        now = time.monotonic()
        # The lease files are read only when a deadline has passed: the common case costs one small read.
        killed = kill(overdue_owners(state, read_lease_states(state_dir), now)) if overdue_spaces(state, now) else []
        if killed:
            print(f"lockd watchdog: {state_dir}: lockd missed its self-fence deadline; killed pids {killed}",
                  file=sys.stderr, flush=True)
        if not daemon_alive(state) and not read_lease_states(state_dir):
            idle_since = idle_since if idle_since is not None else now
            if now - idle_since > 5.0:
                return
        else:
            idle_since = None
        time.sleep(CHECK_INTERVAL_S)


def ensure_running(state_dir: Path) -> None:
    """Start the watchdog for ``state_dir`` unless one runs (its flock tells)."""
    lock = state_dir / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    finally:
        os.close(fd)  # the child takes the lock itself
    package_root = str(Path(__file__).resolve().parents[1])  # so an uninstalled checkout works too
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    with open(state_dir / "watchdog.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "lockd.watchdog", str(state_dir)], stdin=subprocess.DEVNULL,
                         stdout=log, stderr=log, start_new_session=True, close_fds=True,
                         env={**os.environ, "PYTHONPATH": python_path})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m lockd.watchdog STATE_DIR")
    run(Path(sys.argv[1]))
