"""Which writer path, replica fault and migration window a store gets, and why a store that has none says
so; no services (backends are only constructed, which connects nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hvstore.backends.drbd import DrbdBackend, DrbdConfig
from hvstore.backends.iscsi import IscsiBackend, IscsiConfig
from hvstore.backends.local import LocalBackend, LocalConfig
from hvstore.backends.sheepdog import SheepdogBackend, SheepdogConfig
from hvstore.errors import HvstoreError
from hvstore.scenarios.provision import _libvirt_missing
from hvstore.scenarios.stores import (
    DrbdDualPrimary,
    DrbdPeerLoss,
    NoMigrationWindow,
    NoReplicaLoss,
    migration_window,
    replica_loss,
)
from hvstore.scenarios.writers import NodeWriters, QemuIoWriters, writer_path

HOSTS = ("hosta", "hostb")


def _drbd() -> DrbdBackend:
    return DrbdBackend("drbd", DrbdConfig.from_mapping("drbd", {
        "nodes": ["node-a", "node-b"], "addresses": ["10.0.0.1", "10.0.0.2"], "agent_sockets": ["/x/a", "/x/b"]}))


def _local(tmp_path: Path) -> LocalBackend:
    return LocalBackend("local", LocalConfig.from_mapping("local", {"path": str(tmp_path)}))


def _iscsi(tmp_path: Path) -> IscsiBackend:
    return IscsiBackend("iscsi", IscsiConfig(directory=str(tmp_path), state_file=str(tmp_path / "state.json")))


def test_drbd_writers_run_in_the_nodes() -> None:
    path = writer_path(_drbd(), "vol", HOSTS)
    assert isinstance(path, NodeWriters)
    assert path.reason(lease=False) is None and path.reason(lease=True) is None
    assert path.where("hostb") == "hostb (node node-b)"  # scenario hosts stand for the nodes in order
    # DRBD's own refusal of a second writer, as dd in the node reports it
    assert path.refusal.matches("write failed at offset 0: dd: can't open '/dev/drbd0': Read-only file system")
    assert path.refusal.matches("read failed at offset 0: dd: can't open '/dev/drbd0': Wrong medium type")
    assert not path.refusal.matches("write failed at offset 0: dd: error writing '/dev/drbd0': I/O error")
    assert path.takeover_reason is not None and "promoted to Primary" in path.takeover_reason


def test_qemu_image_lock_is_the_refusal_of_qemu_io_writers(tmp_path: Path) -> None:
    path = writer_path(_local(tmp_path), "vol", HOSTS)
    assert path.refusal.matches('qemu-io: can\'t open device x.qcow2: Failed to get "write" lock')
    assert not path.refusal.matches("qemu-io: can't open device x.qcow2: No such file or directory")
    assert path.takeover_reason is None


def test_other_stores_write_with_qemu_io_on_this_host(tmp_path: Path) -> None:
    assert isinstance(writer_path(_local(tmp_path), "vol", HOSTS), QemuIoWriters)
    assert isinstance(writer_path(_iscsi(tmp_path), "vol", HOSTS), QemuIoWriters)


def test_replica_loss_is_refused_with_the_capability_note(tmp_path: Path) -> None:
    local = replica_loss(_local(tmp_path), "vol", HOSTS, tmp_path, print)
    assert isinstance(local, NoReplicaLoss)
    assert local.reason() == "no replicas: one copy on one host"
    iscsi = replica_loss(_iscsi(tmp_path), "vol", HOSTS, tmp_path, print)
    assert iscsi.reason().startswith("no replicas: one tgtd")
    sheepdog = SheepdogBackend("sd", SheepdogConfig.from_mapping("sd", {"address": "127.0.0.1:1"}))
    assert "fake single-process server" in str(replica_loss(sheepdog, "vol", HOSTS, tmp_path, print).reason())
    assert isinstance(replica_loss(_drbd(), "vol", HOSTS, tmp_path, print), DrbdPeerLoss)


def test_only_drbd_has_a_dual_primary_window(tmp_path: Path) -> None:
    assert isinstance(migration_window(_drbd(), "vol", HOSTS, tmp_path, print), DrbdDualPrimary)
    window = migration_window(_local(tmp_path), "vol", HOSTS, tmp_path, print)
    assert isinstance(window, NoMigrationWindow)
    assert window.reason() == "local has no dual-primary window (no shared access: the directory is local to one host)"
    iscsi = migration_window(_iscsi(tmp_path), "vol", HOSTS, tmp_path, print).reason()
    assert iscsi == ("iscsi has no dual-primary window (shared access: any host that reaches the portal and is in "
                     "the ACL)")


def test_provisioning_says_libvirt_is_not_running_in_a_lab_without_it(tmp_path: Path) -> None:
    assert _libvirt_missing(tmp_path) == "libvirt not running (hvstore lab up libvirt)"


def test_iscsi_uri_for_a_host_names_its_initiator(tmp_path: Path) -> None:
    backend = _iscsi(tmp_path)
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "volumes": {
        "vol": {"created": "x", "initiators": [], "snapshots": {}}}}))
    plain = backend.uri("vol")
    assert plain.startswith("iscsi://127.0.0.1:3260/") and plain.endswith("/1")
    spec = json.loads(backend.uri("vol", host="hostb").removeprefix("json:"))
    assert spec["driver"] == "raw"  # what qemu_format says, so `qemu-io -f raw json:...` agrees
    assert spec["file"] == {"driver": "iscsi", "transport": "tcp", "portal": "127.0.0.1:3260",
                            "target": plain.split("/")[3], "lun": 1,
                            "initiator-name": backend.initiator_for("hostb")}


def test_a_scenario_host_without_a_node_is_named() -> None:
    path = writer_path(_drbd(), "vol", ("hosta", "hostb", "hostc"))
    with pytest.raises(HvstoreError, match="scenario host hostc has no node"):
        path.where("hostc")
