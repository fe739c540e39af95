"""The lab: real single-node services under one state directory, the embedded default store set.

Each service is one module with one ``LabService`` subclass (start/stop/health/stores), registered in
``hvstore.lab.registry``; adding a service is adding a file and a line there. Daemons are started through
``Lab.spawn``, which runs each under its own reaping parent (``hvstore.lab.reaper``) in a new session and
records the reaper's pid and start time, so ``down`` stops exactly what the lab started and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from hvstore.errors import BackendUnavailable
from hvstore.lab import procs


@dataclass(frozen=True)
class ProcessStatus:
    name: str
    pid: int | None  # the daemon (the reaper's child), None when not running
    running: bool
    rss_bytes: int | None  # daemon and everything below it


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    running: bool
    healthy: bool
    detail: str
    processes: tuple[ProcessStatus, ...]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["processes"] = [asdict(p) for p in self.processes]
        return data


class Lab:
    """The lab's state directory and the daemons it started."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def pid_dir(self) -> Path:
        return self.root / "pids"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def service_dir(self, service: str) -> Path:
        path = self.root / service
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- processes ----------------------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> int:
        """Start ``argv`` (a daemon running in the foreground) under a reaper; return the reaper's pid."""
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logfile = self.log_dir / f"{name}.log"
        reaper = subprocess.Popen(
            [sys.executable, "-m", "hvstore.lab.reaper", str(logfile), "--", *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, **(env or {})}, cwd=cwd, close_fds=True,
        )
        record = {"reaper_pid": reaper.pid, "start_time": procs.start_time(reaper.pid), "argv": argv}
        (self.pid_dir / f"{name}.json").write_text(json.dumps(record))
        return reaper.pid

    def _record(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.pid_dir / f"{name}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def reaper_pid(self, name: str) -> int | None:
        """The reaper's pid if it is still the process the lab started (pid reuse is checked)."""
        record = self._record(name)
        if not record:
            return None
        pid = record["reaper_pid"]
        if procs.alive(pid) and procs.start_time(pid) == record["start_time"]:
            return pid
        return None

    def daemon_pid(self, name: str) -> int | None:
        reaper = self.reaper_pid(name)
        if reaper is None:
            return None
        # The daemon is the reaper's oldest child; adopted orphans (e.g. gluster bricks) came later, even
        # where pids wrapped around.
        children = procs.children(reaper)
        return children[0] if children else None

    def running(self, name: str) -> bool:
        return self.daemon_pid(name) is not None

    def process_status(self, name: str) -> ProcessStatus:
        reaper = self.reaper_pid(name)
        pid = self.daemon_pid(name)
        rss = None
        if reaper is not None:
            rss = sum(procs.rss_bytes(p) or 0 for p in procs.descendants(reaper))
        return ProcessStatus(name, pid, pid is not None, rss)

    def stop(self, name: str, *, timeout_s: float = 15.0) -> None:
        """Stop one daemon the lab started (SIGTERM to its reaper, which stops the tree); idempotent."""
        reaper = self.reaper_pid(name)
        if reaper is not None:
            os.kill(reaper, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while procs.alive(reaper) and time.monotonic() < deadline:
                time.sleep(0.02)
            if procs.alive(reaper):
                for pid in [*procs.descendants(reaper), reaper]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        (self.pid_dir / f"{name}.json").unlink(missing_ok=True)

    def log_tail(self, name: str, lines: int = 5) -> str:
        try:
            return "\n".join((self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def wait_until(check: Callable[[], bool], *, timeout_s: float, what: str, interval_s: float = 0.05,
               log: Callable[[], str] | None = None) -> None:
    """Poll ``check`` until it returns True; BackendUnavailable naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            tail = log().strip().splitlines()[-1] if log and log().strip() else ""
            raise BackendUnavailable(f"{what} not ready after {timeout_s:g} s" + (f": {tail}" if tail else ""))
        time.sleep(interval_s)


class LabService(ABC):
    """One real service of the lab. ``start`` is idempotent and recovers a crashed service from its state."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @property
    def dir(self) -> Path:
        return self.lab.service_dir(self.name)

    @property
    @abstractmethod
    def process_names(self) -> tuple[str, ...]:
        """Names of the daemons this service spawns through ``Lab.spawn``."""

    @property
    @abstractmethod
    def address(self) -> str: ...

    @abstractmethod
    def start(self) -> None:
        """Bring the service up (bootstrap on first use, restart what died otherwise) and wait for health."""

    def stop(self) -> None:
        for name in reversed(self.process_names):
            self.lab.stop(name)

    @abstractmethod
    def health(self) -> tuple[bool, str]:
        """(healthy, one-line detail), quickly, without side effects."""

    def stores(self) -> dict[str, dict[str, Any]]:
        """hvstore.toml tables (``{store name: {type: ..., ...}}``) this service provides while running."""
        return {}

    def lease_stores(self) -> dict[str, dict[str, Any]]:
        """Where lockd keeps the leases of this service's stores, in the same storage as the disks:
        ``{store name: lockd [store] table}`` (hvstore.toml ``[lease_stores.NAME]``)."""
        return {}

    def status(self) -> ServiceStatus:
        processes = tuple(self.lab.process_status(n) for n in self.process_names)
        running = bool(processes) and all(p.running for p in processes)
        healthy, detail = self.health() if running else (False, "not running")
        return ServiceStatus(self.name, self.address, running, healthy, detail, processes)
