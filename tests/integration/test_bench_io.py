"""`hvstore bench io` on the lab's local and ceph stores with tiny profiles: every figure comes through
fio's nbd engine into qemu-nbd (cache=none) and is parsed into positive numbers, the baseline is in the
same run, the machine and its load are recorded, and no scratch volume is left behind. Figures only:
nothing here asserts how fast anything is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hvstore.lab import LabController
from tests.integration.conftest import lab_store

STORES = ("local", "ceph")
PROFILES = ("rand-write-4k-qd1", "rand-read-4k-qd32")


def _hvstore(lab: LabController, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "hvstore", "--config", str(lab.config_path), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


@pytest.fixture(scope="module")
def result(lab: LabController) -> dict:
    for store in STORES:
        lab_store(lab, store)
    done = _hvstore(lab, "bench", "io", *STORES, *[a for p in PROFILES for a in ("-p", p)], "--runtime", "0.5",
                    "--rounds", "2", "--size", "32M", "--cross-check", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.timeout(600)
def test_every_store_has_parsed_positive_figures_from_the_qemu_engine(result: dict) -> None:
    runs = {r["store"]: r for r in result["stores"]}
    assert list(runs) == ["baseline", *STORES]
    assert [p["name"] for p in result["profiles"]] == list(PROFILES)
    for run in runs.values():
        assert run["skipped"] is None
        assert "qemu-nbd" in run["engine"] and "--cache=none" in run["engine"] and "--aio=native" in run["engine"]
        assert [f["profile"] for f in run["figures"]] == list(PROFILES)
        for f in run["figures"]:
            assert f["engine"] == "fio nbd -> qemu-nbd"
            assert f["requests"] > 0 and f["seconds"] > 0 and f["iops"] > 0 and f["mib_per_s"] > 0
            assert 0 < f["p50_latency_ms"] <= f["p99_latency_ms"] and f["mean_latency_ms"] > 0
            assert len(f["rounds_iops"]) == 2 and f["iops"] in f["rounds_iops"]
            assert f["iops_vs_baseline"] > 0 and f["p99_vs_baseline"] > 0
    assert all(f["iops_vs_baseline"] == 1.0 for f in runs["baseline"]["figures"])
    assert runs["ceph"]["uri_kind"] == "rbd" and runs["local"]["qemu_format"] == "qcow2"


@pytest.mark.timeout(600)
def test_cross_check_runs_where_fio_has_its_own_engine(result: dict) -> None:
    runs = {r["store"]: r for r in result["stores"]}
    assert [f["engine"] for f in runs["ceph"]["fio"]] == ["fio rbd"] * len(PROFILES)
    assert [f["engine"] for f in runs["baseline"]["fio"]] == ["fio libaio"] * len(PROFILES)
    assert all(f["iops"] > 0 and f["p99_latency_ms"] > 0 for r in runs.values() for f in r["fio"])
    assert runs["local"]["fio"] == [] and "qcow2" in runs["local"]["fio_note"]  # why there is none


@pytest.mark.timeout(600)
def test_machine_and_load_are_recorded(result: dict) -> None:
    machine = result["machine"]
    assert machine["nproc"] == os.cpu_count() and machine["cpu_model"] and machine["kernel"] == os.uname().release
    assert len(machine["load_average"]) == 3 and len(machine["load_average_after"]) == 3
    assert machine["fio"].startswith("fio-") and "qemu-nbd" in machine["qemu_nbd"]


@pytest.mark.timeout(600)
def test_no_scratch_volume_is_left(lab: LabController, result: dict) -> None:
    for store in STORES:
        done = _hvstore(lab, "volume", "list", store, "--json", timeout=120)
        assert done.returncode == 0, done.stderr[-1000:]
        assert "bench-io-" not in done.stdout
