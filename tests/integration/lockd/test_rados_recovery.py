"""The RADOS lease store keeps working across a crash and restart of the whole (lab) cluster."""

from __future__ import annotations

import os
import signal
import time
import uuid

from lockd.errors import StoreUnavailable
from lockd.lease import Heartbeat
from lockd.stores.rados import RadosLeaseStore, RadosStoreConfig
from tests.integration.conftest import lab_store


def test_store_recovers_after_the_cluster_is_killed_and_restarted(lab):
    cfg = lab_store(lab, "ceph").config
    store = RadosLeaseStore(RadosStoreConfig(conf=cfg.conf, pool=cfg.pool, keyring=cfg.keyring, user=cfg.user,
                                             namespace=f"recovery-{uuid.uuid4().hex[:8]}", op_timeout_s=2.0))
    store.connect()
    try:
        lockspace = "recovery"
        first = Heartbeat("hosta", "inc1", 0, 8.0, client=store.client_id())
        store.write_heartbeat(lockspace, first, expected=None)
        threads_with_one_client = _threads()
        (ceph,) = lab.services(["ceph"])
        for name in ceph.process_names:  # the mon and every OSD
            os.kill(lab.lab.daemon_pid(name), signal.SIGKILL)
        lab.up(["ceph"])
        deadline = time.monotonic() + 60
        while True:  # calls fail while the client finds the restarted daemons, then work again
            try:
                beats = store.read_heartbeats(lockspace)
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store did not recover within 60 s of the restart"
                time.sleep(0.2)
        assert beats["hosta"] == first
        store.write_heartbeat(lockspace, first.renewed(client=store.client_id()), expected=first)
        # Every client abandoned on the way was shut down: this process is back to one client's threads.
        deadline = time.monotonic() + 60
        while _threads() > threads_with_one_client:
            assert time.monotonic() < deadline, f"{_threads()} threads, {threads_with_one_client} with one client"
            time.sleep(0.2)
    finally:
        store.close()


def _threads() -> int:
    """Threads of this process, librados' native ones included."""
    return len(os.listdir("/proc/self/task"))
