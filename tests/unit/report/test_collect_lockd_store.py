"""Where ``hvstore compare`` measures lockd's own figures: the lab's lease storage, RADOS first, in a place of
its own; a file store in a scratch directory when the lab has no RADOS or Gluster lease storage."""

from __future__ import annotations

from pathlib import Path

from hvstore.config import HvstoreConfig, parse_config
from hvstore.report.collect import LOCKD_BENCH_PLACE, _lockd_store

RADOS = {"type": "rados", "conf": "/etc/ceph/ceph.conf", "pool": "hvstore", "namespace": "lockd"}
GLUSTER = {"type": "gluster", "volume": "hvlease", "server": "127.0.0.1", "root": "/lockd"}
ISCSI = {"type": "iscsi", "portal": "127.0.0.1:3260", "target": "iqn.2026-11.org.x:leases",
         "initiator": "iqn.2026-11.org.x:{host}"}


def _config(lease_stores: dict[str, dict[str, str]]) -> HvstoreConfig:
    stores = {name: {"type": "local", "path": "/tmp"} for name in lease_stores}
    return parse_config({"stores": stores, "lease_stores": lease_stores}, Path("x.toml"))


def test_rados_first_in_a_namespace_of_its_own() -> None:
    store = _lockd_store(_config({"gluster": GLUSTER, "ceph": RADOS}), "/scratch")
    assert store == {**RADOS, "namespace": LOCKD_BENCH_PLACE}


def test_gluster_in_a_directory_beside_the_lab_lockds() -> None:
    store = _lockd_store(_config({"iscsi": ISCSI, "gluster": GLUSTER}), "/scratch")
    assert store == {**GLUSTER, "root": f"/{LOCKD_BENCH_PLACE}"}


def test_file_store_in_scratch_without_rados_or_gluster() -> None:
    assert _lockd_store(_config({"iscsi": ISCSI}), "/scratch") == {"type": "file", "path": "/scratch"}
