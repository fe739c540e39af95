"""Owner stand-ins (``lockd.owners.stand_in``) die with their spawner, however the spawner ends.

A ``sleep 3600`` left by a compare process that died of SIGSEGV held the test's output pipe for minutes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lockd.owners import process_start_time, spawn_stand_in, stand_in

REPO = str(Path(__file__).resolve().parents[3])

# Spawns a stand-in through the helper, prints its pid, then dies the way the test says (or waits for it).
_SPAWNER = """
import os, signal, sys, time
from lockd.owners import spawn_stand_in

owner = spawn_stand_in()
print(owner.pid, flush=True)
death = sys.argv[1]
if death != "wait":
    os.kill(os.getpid(), getattr(signal, death))
time.sleep(3600)
"""


def _gone_within(pid: int, seconds: float) -> bool:
    """Liveness bound: the kernel signals the stand-in when its parent dies; reaping it takes a moment."""
    deadline = time.monotonic() + seconds
    while process_start_time(pid) is not None:  # None once it exited (a zombie counts as exited)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("death", ["SIGKILL", "SIGSEGV", "SIGTERM"])
def test_stand_in_dies_when_its_spawner_dies_of_a_signal(death: str) -> None:
    spawner = subprocess.Popen([sys.executable, "-c", _SPAWNER, death], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    assert spawner.stdout is not None
    owner_pid = int(spawner.stdout.readline())
    assert spawner.wait(timeout=30) == -getattr(signal, death)
    assert _gone_within(owner_pid, 5.0), f"stand-in {owner_pid} outlived its spawner killed by {death}"


def test_stand_in_lives_as_long_as_its_spawner() -> None:
    spawner = subprocess.Popen([sys.executable, "-c", _SPAWNER, "wait"], cwd=REPO, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert spawner.stdout is not None
        owner_pid = int(spawner.stdout.readline())
        time.sleep(0.3)
        assert process_start_time(owner_pid) is not None
    finally:
        spawner.kill()
        spawner.wait()
    assert _gone_within(owner_pid, 5.0)


def test_stand_in_block_ends_it_on_an_error() -> None:
    with pytest.raises(RuntimeError), stand_in() as owner:
        assert owner.poll() is None
        raise RuntimeError("the bench failed")
    assert owner.returncode == -signal.SIGKILL


def test_spawn_passes_popen_options() -> None:
    owner = spawn_stand_in([sys.executable, "-c", "print('held', flush=True)"], stdout=subprocess.PIPE, text=True)
    out, _ = owner.communicate(timeout=30)
    assert (owner.returncode, out) == (0, "held\n")
