"""`hvstore scenario run` on the lab: the lease hand-off and provisioning scenarios on the local store (and
provisioning up to a started libvirt domain on ceph), failover on iscsi (the dead host's writer is fenced by
its initiator), node loss on ceph (one of 3 OSDs) and on DRBD (the peer VM), DRBD's dual-primary window,
and a broken scenario file failing with exit 2 before anything is created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hvstore.lab import LabController
from tests.integration.conftest import lab_store

ROOT = Path(__file__).resolve().parents[2]


def _hvstore(lab: LabController, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hvstore", "--config", str(lab.config_path), *args],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def local_lab(lab: LabController) -> LabController:
    lab_store(lab, "local")
    return lab


def _scenario(lab: LabController, name: str, store: str) -> dict[str, Any]:
    done = _hvstore(lab, "scenario", "run", str(ROOT / "scenarios" / f"{name}.yaml"), "--store", store, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["status"] == "ok", result["reason"]
    return result


def _check(result: dict[str, Any], expect: str) -> dict[str, Any]:
    check = next(c for c in result["checks"] if c["expect"] == expect)
    assert check["passed"], check["meaning"]
    return check


def test_migration_hands_the_lease_over(local_lab: LabController) -> None:
    result = _scenario(local_lab, "migration", "local")
    assert result["measurements"]["destination_refused_while_source_holds"] is True
    assert result["measurements"]["handoff_s"] >= result["measurements"]["release_s"] > 0
    # local has no dual-primary window: both window steps say so instead of pretending
    assert [s["step"] for s in result["skipped_steps"]] == ["migration-window open", "migration-window close"]
    assert "local has no dual-primary window" in result["reason"]


def test_provisioning_times_every_command(local_lab: LabController) -> None:
    result = _scenario(local_lab, "provisioning", "local")
    steps = [c["step"] for c in result["measurements"]["provision_commands"]]
    assert steps[:3] == ["create", "uri", "disk-xml"] and steps[3].startswith("QEMU opens")
    total = sum(c["seconds"] for c in result["measurements"]["provision_commands"])
    assert result["measurements"]["provision_s"] == pytest.approx(total, abs=0.01)
    assert "prov-" not in _hvstore(local_lab, "volume", "list", "local").stdout  # cleaned up


def test_broken_scenario_file_is_exit_2(local_lab: LabController, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nphases:\n  - steps:\n      - explode: {}\n")
    done = _hvstore(local_lab, "scenario", "run", str(bad), "--store", "local")
    assert done.returncode == 2
    assert "unknown step 'explode'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_provisioning_reaches_a_started_domain_holding_the_lease(lab: LabController) -> None:
    lab_store(lab, "ceph")
    lab.up(["libvirt"])  # and the lab's lockd, libvirt's lock daemon
    result = _scenario(lab, "provisioning", "ceph")
    steps = [c["step"] for c in result["measurements"]["provision_commands"]]
    assert steps[4:] == ["define a domain (firmware only)", "attach the volume and its lease",
                         "start the domain (QEMU opens the volume, the lock manager acquires)"]
    assert result["skipped_steps"] == []
    assert "holds hvstore-ceph/prov-" in result["measurements"]["provision_lease"]
    assert "prov-" not in _hvstore(lab, "volume", "list", "ceph").stdout  # cleaned up


def test_failover_on_iscsi_fences_the_dead_hosts_initiator(lab: LabController) -> None:
    lab_store(lab, "iscsi")
    result = _scenario(lab, "failover", "iscsi")
    check = _check(result, "last-writer")
    assert check["late_or_foreign_chunks"] == 0 and check["chunks"] == {"b": 64}
    fenced = " ".join(result["measurements"]["storage_fencing_done"])
    assert "iqn.2026-11.org.hvstore:hosta" in fenced and "session(s) closed" in fenced


def test_node_loss_on_ceph_keeps_every_acknowledged_write(lab: LabController) -> None:
    lab_store(lab, "ceph")
    result = _scenario(lab, "node-loss", "ceph")
    assert any("fault: killed ceph-osd." in e for e in result["events"])
    assert _check(result, "last-writer")["chunks"] == {"a": 64}
    assert result["measurements"]["writer_a_acked_writes"] == 30 * 64
    status = lab.status(["ceph"])[0]
    assert status.healthy and "3/3 osd up" in status.detail, status.detail  # the killed OSD is back


@pytest.fixture(scope="module")
def drbd_lab(lab: LabController) -> LabController:
    lab.up(["drbd"])
    return lab


def test_node_loss_on_drbd_continues_and_resyncs_the_peer(drbd_lab: LabController) -> None:
    result = _scenario(drbd_lab, "node-loss", "drbd")
    m = result["measurements"]
    assert m["writer_a_acked_writes"] == 30 * 64  # every write on the Primary acknowledged, none failed
    assert m["survivor_while_peer_gone"]["role"] == "Primary" and m["survivor_while_peer_gone"]["disk"] == "UpToDate"
    assert m["resync_kib"] > 0
    assert _check(result, "replica-resynced")
    assert _check(result, "last-writer")["chunks"] == {"a": 64}


def test_drbd_second_primary_only_inside_the_migration_window(drbd_lab: LabController) -> None:
    result = _scenario(drbd_lab, "migration", "drbd")
    opened = _check(result, "dual-primary-window")
    assert "Multiple primaries not allowed" in opened["refused_outside_window"]
    assert set(opened["roles_inside_window"].values()) == {"Primary"}
    closed = _check(result, "dual-primary-closed")
    assert sorted(closed["roles_after_window"].values()) == ["Primary", "Secondary"]
    assert result["measurements"]["destination_refused_while_source_holds"] is True
    assert result["skipped_steps"] == []


def test_split_brain_on_drbd_is_refused_by_drbd_itself_and_by_lockd(drbd_lab: LabController) -> None:
    result = _scenario(drbd_lab, "split-brain", "drbd")
    without = _check(result, "damage")
    assert without["refused_by_image_lock"] == ["b"]  # hostb's node is Secondary: DRBD refuses its writer
    assert without["chunks"] == {"a": 32} and not without["damage_detected"]
    with_lockd = _check(result, "single-writer")
    assert list(with_lockd["writers_refused"]) == ["b2"]
