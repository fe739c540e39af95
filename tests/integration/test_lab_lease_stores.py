"""The lab names, for each store whose storage can hold leases, where lockd keeps them ([lease_stores] in
hvstore.toml), and a lockd store built from that table works: leases live in the same storage as the disks."""

from __future__ import annotations

import uuid

import pytest

from hvstore.config import load_config
from lockd.daemon import DaemonConfig
from lockd.lease import Heartbeat
from tests.integration.conftest import lab_store


@pytest.mark.parametrize(("store", "kind"), [("ceph", "rados"), ("gluster", "gluster"), ("gluster-dist", "gluster"),
                                             ("iscsi", "iscsi")])
def test_a_lab_lease_store_holds_a_heartbeat(lab, store, kind):
    lab_store(lab, store)
    table = load_config(lab.config_path).lease_stores[store]
    assert table["type"] == kind
    # The lab's own table, moved aside (another namespace / directory) so the lab lockd never sees the test;
    # the iSCSI LUN has no such place (a lockspace of its own keeps the test apart). {host} -> "hosta".
    scratch = {"rados": {"namespace": "lab-lease-test"}, "gluster": {"root": "/lockd-test-lab"}}.get(kind, {})
    lease_store = DaemonConfig(host_id="hosta", store={**table, **scratch}).open_store()
    lease_store.connect()
    try:
        lockspace = f"lab-lease-{uuid.uuid4().hex[:8]}"
        beat = Heartbeat("hosta", "inc1", 0, 8.0, client=lease_store.client_id())
        lease_store.write_heartbeat(lockspace, beat, expected=None)
        assert lease_store.read_heartbeats(lockspace) == {"hosta": beat}
    finally:
        lease_store.close()


def test_the_gluster_leases_have_a_volume_of_their_own(lab):
    lab_store(lab, "gluster")
    config = load_config(lab.config_path)
    images = {config.store(name).config.volume for name in ("gluster", "gluster-dist")}  # type: ignore[attr-defined]
    assert config.lease_stores["gluster"]["volume"] not in images
