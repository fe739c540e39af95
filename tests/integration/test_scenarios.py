"""`hvstore scenario run` on the lab: the lease hand-off and provisioning scenarios on the local store, and a
broken scenario file failing with exit 2 before anything is created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_migration_hands_the_lease_over(local_lab: LabController) -> None:
    done = _hvstore(local_lab, "scenario", "run", str(ROOT / "scenarios" / "migration.yaml"), "--store", "local",
                    "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "ok"
    assert result["measurements"]["destination_refused_while_source_holds"] is True
    assert result["measurements"]["handoff_s"] >= result["measurements"]["release_s"] > 0


def test_provisioning_times_every_command(local_lab: LabController) -> None:
    done = _hvstore(local_lab, "scenario", "run", str(ROOT / "scenarios" / "provisioning.yaml"), "--store", "local",
                    "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    steps = [c["step"] for c in result["measurements"]["provision_commands"]]
    assert steps[:3] == ["create", "uri", "disk-xml"] and steps[3].startswith("attach")
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
