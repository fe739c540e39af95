"""The lab's process management on real daemons (sanlock is the quickest to start)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hvstore.lab import LabController, procs


@pytest.fixture
def sanlock(lab: LabController):
    lab.up(["sanlock"])
    yield lab
    lab.down(["sanlock"])


def wait_for(check, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_status_json_shape(sanlock):
    out = subprocess.run([sys.executable, "-m", "hvstore", "lab", "status", "sanlock", "--json"],
                         capture_output=True, text=True, check=True).stdout
    (status,) = json.loads(out)
    assert status["name"] == "sanlock" and status["healthy"] and status["running"]
    (process,) = status["processes"]
    assert procs.alive(process["pid"]) and process["rss_bytes"] > 0
    assert status["address"].endswith("sanlock.sock")


def test_up_is_idempotent_and_recovers_a_killed_daemon(sanlock):
    pid = sanlock.lab.daemon_pid("sanlock")
    sanlock.up(["sanlock"])
    assert sanlock.lab.daemon_pid("sanlock") == pid  # healthy: left alone
    os.kill(pid, signal.SIGKILL)
    # The reaper reaps at once (no 1-2 s zombie) and, its daemon gone, exits itself.
    wait_for(lambda: not procs.alive(pid), timeout_s=2)
    wait_for(lambda: not sanlock.lab.running("sanlock"))
    (status,) = sanlock.status(["sanlock"])
    assert not status.running and not status.healthy
    sanlock.up(["sanlock"])
    new_pid = sanlock.lab.daemon_pid("sanlock")
    assert new_pid and new_pid != pid
    assert sanlock.status(["sanlock"])[0].healthy


def test_down_stops_only_what_the_lab_started(sanlock, tmp_path):
    # A process of the same program the lab did not start must survive `lab down`.
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        pid = sanlock.lab.daemon_pid("sanlock")
        sanlock.down(["sanlock"])
        assert not procs.alive(pid)
        assert procs.alive(stranger.pid)
        assert sanlock.lab.reaper_pid("sanlock") is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_stale_pid_record_is_not_trusted(sanlock):
    record = sanlock.lab.pid_dir / "sanlock.json"
    data = json.loads(record.read_text())
    data["start_time"] = 1  # the pid now names "another" process: pid reuse
    record.write_text(json.dumps(data))
    assert sanlock.lab.reaper_pid("sanlock") is None
    sanlock.up(["sanlock"])  # starts a fresh instance, never signals the stranger
    assert sanlock.status(["sanlock"])[0].healthy
    os.kill(data["reaper_pid"], signal.SIGTERM)  # clean up the instance the test orphaned


def test_unknown_service_is_a_clear_error():
    done = subprocess.run([sys.executable, "-m", "hvstore", "lab", "up", "nosuch"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("hvstore: unknown lab service 'nosuch'")
