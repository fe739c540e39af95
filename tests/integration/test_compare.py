"""`hvstore compare --quick` on the lab's local store and one network store (ceph): the three report files,
figures from the run for every store, every scenario reported (a figure or a reason), and the HTML
rendered by headless Chromium into a screenshot that is not blank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hvstore.lab import LabController
from hvstore.report.screenshot import distinct_rows, screenshot
from tests.integration.conftest import lab_store

STORES = ("local", "ceph")


@pytest.fixture(scope="module")
def compared(lab: LabController, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    for store in STORES:
        lab_store(lab, store)
    out = tmp_path_factory.mktemp("compare")
    argv = [sys.executable, "-m", "hvstore", "--config", str(lab.config_path), "compare", "--quick",
            *[arg for store in STORES for arg in ("--stores", store)], "--report", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stderr[-2000:]
    return out, json.loads((out / "report.json").read_text())


@pytest.mark.timeout(900)
def test_three_files_and_every_store_measured(compared: tuple[Path, dict]) -> None:
    out, report = compared
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "index.html"}
    runs = {r["store"]: r for r in report["bench"]["stores"]}
    assert set(runs) == {"baseline", *STORES}
    profiles = {p["name"] for p in report["bench"]["profiles"]}
    for run in runs.values():
        assert run["skipped"] is None
        assert {f["profile"] for f in run["figures"]} == profiles
        assert all(f["iops"] > 0 and f["requests"] > 0 for f in run["figures"])
    assert report["machine"]["nproc"] == os.cpu_count()
    md = (out / "report.md").read_text()
    assert all(f"| {store} (" in md for store in STORES)


@pytest.mark.timeout(900)
def test_every_scenario_has_an_outcome_or_a_reason(compared: tuple[Path, dict]) -> None:
    _, report = compared
    seen = {(r["scenario"], r["store"]) for r in report["scenarios"]}
    names = {p.stem for p in (Path(__file__).resolve().parents[2] / "scenarios").glob("*.yaml")}
    assert seen == {(n, s) for n in names for s in STORES}
    for result in report["scenarios"]:
        assert result["status"] in ("ok", "failed", "not-applicable", "error")
        if result["status"] != "ok":
            assert result["reason"]


@pytest.mark.timeout(900)
def test_split_brain_with_lockd_refuses_the_second_writer(compared: tuple[Path, dict]) -> None:
    _, report = compared
    for result in (r for r in report["scenarios"] if r["scenario"] == "split-brain"):
        with_lockd = result["checks"][1]
        assert with_lockd["expect"] == "single-writer" and with_lockd["passed"], result["events"]
        assert list(with_lockd["writers_refused"]) == ["b2"]


@pytest.mark.timeout(900)
def test_html_renders_in_headless_chromium(compared: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = compared
    png = screenshot(out / "index.html", tmp_path / "report.png", width=1280, height=2000)
    width, height, rows = distinct_rows(png)
    assert (width, height) == (1280, 2000)
    assert rows > 100  # a blank page is one row repeated; the report has text, bars and tables
