"""lockd's outside watchdog: the deadline rule on persisted state, and the real process killing an owner."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lockd.owners import ProcessRef
from lockd.watchdog import boot_id, daemon_alive, overdue_owners

REPO = Path(__file__).resolve().parents[3]


def state(last_acked_start: float | None, **extra: Any) -> dict[str, Any]:
    return {"boot_id": boot_id(), "self_fence_after_s": 6.0,
            "spaces": {"ls": {"last_acked_start": last_acked_start}, "other": {"last_acked_start": 1e12}},
            **extra}


def leases(owners: list[ProcessRef]) -> list[dict[str, Any]]:
    return [{"lockspace": "ls", "key": "k", "owners": [o.to_json() for o in owners]},
            {"lockspace": "other", "key": "k2", "owners": [[999999, 1]]}]


def test_owners_are_overdue_from_the_deadline_on() -> None:
    owner = ProcessRef(1234, 5)
    assert overdue_owners(state(100.0), leases([owner]), now=105.9) == []
    assert overdue_owners(state(100.0), leases([owner]), now=106.0) == [owner]  # only the overdue space's
    assert overdue_owners(state(None), leases([owner]), now=1e9) == []          # not joined: nothing held
    assert overdue_owners({**state(100.0), "boot_id": "another boot"}, leases([owner]), now=1e9) == []
    assert overdue_owners({}, leases([owner]), now=1e9) == []


def test_daemon_alive_checks_pid_and_start_time() -> None:
    me = ProcessRef.of_pid(os.getpid())
    assert daemon_alive({"daemon": me.to_json()})
    assert not daemon_alive({"daemon": [me.pid, me.start_time + 1]})
    assert not daemon_alive({})


def test_watchdog_process_kills_overdue_owners_and_exits_with_its_directory(tmp_path: Path) -> None:
    state_dir = tmp_path / "run"
    state_dir.mkdir()
    victim = subprocess.Popen(["sleep", "600"])
    try:
        ref = ProcessRef.of_pid(victim.pid)
        (state_dir / "state.json").write_text(json.dumps(state(time.monotonic() - 5.8)))
        (state_dir / "leases").mkdir()
        for i, lease in enumerate(leases([ref])):
            (state_dir / "leases" / f"{i}.json").write_text(json.dumps(lease))
        watchdog = subprocess.Popen([sys.executable, "-m", "lockd.watchdog", str(state_dir)], cwd=REPO,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})
        assert victim.wait(timeout=20) == -9
        second = subprocess.run([sys.executable, "-m", "lockd.watchdog", str(state_dir)], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=20)
        assert second.returncode == 0  # one watchdog per directory: the second leaves at once
        shutil.rmtree(state_dir)
        assert watchdog.wait(timeout=20) == 0
    finally:
        victim.kill()
        victim.wait()
