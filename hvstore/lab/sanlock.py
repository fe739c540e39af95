"""sanlock 3.8.5, the baseline lockd is measured against (``lockd bench``), as a lab service.

Run as ``sanlock daemon -D -w 0 -l 0``: no watchdog (no wdmd here) and no mlockall. This sandbox lacks
CAP_SYS_RESOURCE, so sanlock's setrlimit(RLIMIT_MEMLOCK) fails and the daemon exits; a tiny LD_PRELOAD shim
(``data/setrlimit_clamp.c``, compiled once into the lab) clamps the request to the hard limit. The daemon's
socket lives in the lab (``SANLOCK_RUN_DIR``); clients (python3-sanlock) must set the same variable.
Lease storage for benchmarks: files under ``<lab>/sanlock/leases`` (sanlock uses O_DIRECT; the lab is on a
real filesystem).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from hvstore.errors import BackendUnavailable
from hvstore.lab.service import LabService, wait_until

SHIM_SOURCE = Path(__file__).with_name("data") / "setrlimit_clamp.c"


class SanlockService(LabService):
    name = "sanlock"
    description = "sanlock daemon (baseline for lockd), no watchdog"

    @property
    def process_names(self) -> tuple[str, ...]:
        return ("sanlock",)

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def lease_dir(self) -> Path:
        return self.dir / "leases"

    @property
    def address(self) -> str:
        return str(self.run_dir / "sanlock.sock")

    def client_env(self) -> dict[str, str]:
        """Environment a sanlock client (CLI or python3-sanlock) needs to reach this daemon."""
        return {"SANLOCK_RUN_DIR": str(self.run_dir)}

    def start(self) -> None:
        if self.lab.running("sanlock") and self.health()[0]:
            return
        self.lab.stop("sanlock")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lease_dir.mkdir(parents=True, exist_ok=True)
        shim = self._build_shim()
        for leftover in ("sanlock.sock", "sanlock.pid"):
            (self.run_dir / leftover).unlink(missing_ok=True)
        self.lab.spawn("sanlock", ["sanlock", "daemon", "-D", "-w", "0", "-l", "0", "-U", "0", "-G", "0"],
                       env={**self.client_env(), "LD_PRELOAD": str(shim)})
        wait_until(lambda: self.health()[0], timeout_s=20, what="sanlock", log=lambda: self.lab.log_tail("sanlock"))

    def health(self) -> tuple[bool, str]:
        if not (self.run_dir / "sanlock.sock").exists():
            return False, "no socket"
        done = subprocess.run(["sanlock", "client", "status"], capture_output=True, text=True, timeout=10,
                              env={**os.environ, **self.client_env()})
        if done.returncode != 0:
            return False, (done.stderr.strip().splitlines() or ["sanlock client status failed"])[-1]
        lockspaces = sum(1 for line in done.stdout.splitlines() if line.startswith("s "))
        return True, f"{lockspaces} lockspace(s)"

    def _build_shim(self) -> Path:
        shim = self.dir / "setrlimit_clamp.so"
        if shim.exists() and shim.stat().st_mtime >= SHIM_SOURCE.stat().st_mtime:
            return shim
        done = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(SHIM_SOURCE), "-ldl"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BackendUnavailable(f"cannot build the sanlock setrlimit shim: {done.stderr.strip()[-200:]}")
        return shim
