"""Closing the RADOS lease store while another thread is inside a store call (the lab's real Ceph).

A manager's ``stop()`` closes its store while a renewal may still be running in a worker thread (or one an
``asyncio.timeout`` gave up on). Shutting librados down under that call crashed the process with SIGSEGV
in ``rados_write_op_operate`` or left the call hanging forever: ``hvstore compare`` died of SIGSEGV in its
in-process ``lockd bench`` on this store, and the bench hung in 8 of 12 runs with a 5 ms renew interval.
Each check runs in a child process, so a crash is an exit status here instead of the end of pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import asdict
from pathlib import Path

from lockd.stores.rados import RadosStoreConfig
from tests.integration.conftest import lab_store

REPO = str(Path(__file__).resolve().parents[3])

# Every round: a thread renews a heartbeat back to back; close() lands while it runs.
_STORE_CHILD = """
import json, sys, threading, time
from lockd.errors import StoreUnavailable
from lockd.lease import Heartbeat
from lockd.stores.rados import RadosLeaseStore, RadosStoreConfig

config = RadosStoreConfig(**json.loads(sys.argv[1]))
for round_ in range(10):
    store = RadosLeaseStore(config)
    store.connect()
    beat = Heartbeat("hosta", f"inc{round_}", 0, 8.0, client=store.client_id())
    store.write_heartbeat(f"race{round_}", beat, expected=None)
    ended = []

    def renew_until_closed(beat=beat, lockspace=f"race{round_}"):
        try:
            while True:
                store.write_heartbeat(lockspace, beat.renewed(), expected=beat)
                beat = beat.renewed()
        except StoreUnavailable:
            ended.append("closed")

    worker = threading.Thread(target=renew_until_closed, daemon=True)
    worker.start()
    time.sleep(0.02 + 0.005 * round_)
    store.close()
    worker.join(30)  # liveness bound: a call left inside a shut-down client never returns
    if worker.is_alive():
        sys.exit(f"round {round_}: a store call never returned after close()")
    assert ended == ["closed"], ended
print("ok")
"""

# The bench's own path: LeaseManager.stop() while its renew loop (every 5 ms) has a call in flight.
_MANAGER_CHILD = """
import asyncio, json, sys, tempfile
from pathlib import Path
from lockd.lease import LeaseTiming
from lockd.manager import LeaseManager, ManagerConfig
from lockd.stores.rados import RadosLeaseStore, RadosStoreConfig

config = RadosStoreConfig(**json.loads(sys.argv[1]))

async def main():
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(5):
            manager = LeaseManager(ManagerConfig(host=f"host{round_}", state_dir=Path(tmp, str(round_)),
                                                 timing=LeaseTiming(ttl_s=8.0, renew_interval_s=0.005,
                                                                    margin_s=2.0),
                                                 lockspaces=("race",)), RadosLeaseStore(config))
            await manager.start()
            async with asyncio.TaskGroup() as tg:
                manager.run(tg)
                await asyncio.sleep(0.2)
                await manager.stop()

asyncio.run(asyncio.wait_for(main(), 60))  # liveness bound; asyncio.run then waits for every worker thread
print("ok")
"""


def _run_child(code: str, config: RadosStoreConfig) -> None:
    try:
        done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code, json.dumps(asdict(config))],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as hung:
        raise AssertionError(f"child hung: {hung.stderr}") from None
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-3000:]


def _config(lab: object) -> RadosStoreConfig:
    cfg = lab_store(lab, "ceph").config  # type: ignore[arg-type]
    return RadosStoreConfig(conf=cfg.conf, pool=cfg.pool, keyring=cfg.keyring, user=cfg.user,
                            namespace=f"close-race-{uuid.uuid4().hex[:8]}")


def test_close_during_a_running_call_lets_it_finish_then_refuses_new_calls(lab: object) -> None:
    _run_child(_STORE_CHILD, _config(lab))


def test_manager_stop_while_a_renewal_runs_neither_crashes_nor_hangs(lab: object) -> None:
    _run_child(_MANAGER_CHILD, _config(lab))
