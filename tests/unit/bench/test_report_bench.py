"""The report renders what ``hvstore bench io`` now returns: p99 next to every figure, the engine of each
store, the rounds and the machine the figures were measured on. The document is built from the runner's
own types and a real fio output (tests/unit/bench/data), not typed by hand."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hvstore.bench.fio import parse_fio_json
from hvstore.bench.profiles import select_profiles
from hvstore.bench.runner import BASELINE, ENGINE, StoreRun, median_figure, with_ratios
from hvstore.report.render import render_html, render_markdown

DATA = Path(__file__).resolve().parent / "data" / "fio-nbd-randwrite-4k-qd32.json"
MACHINE = {"cpu_model": "Test CPU 9000", "nproc": 2, "kernel": "6.1.0", "load_average": [1.0, 1.0, 1.0],
           "load_average_after": [2.0, 1.5, 1.0], "fio": "fio-3.33", "qemu_nbd": "qemu-nbd 7.2.22"}


def _document() -> dict[str, Any]:
    profile = select_profiles(["rand-write-4k-qd32"])[0]
    sample = parse_fio_json(DATA.read_text(), write=True)
    base = median_figure(BASELINE, profile.name, ENGINE, [sample])
    ceph = median_figure("ceph", profile.name, ENGINE, [replace(sample, iops=sample.iops / 10,
                                                                p99_latency_ms=sample.p99_latency_ms * 20)])
    runs = [StoreRun(BASELINE, "raw file", "raw", "file", "qemu-nbd --cache=none <file uri>", [base]),
            StoreRun("ceph", "rbd", "raw", "rbd", "qemu-nbd --cache=none <rbd uri>", [ceph]),
            StoreRun("drbd", "drbd", "raw", "file", skipped="/dev/drbd1 is not on this host")]
    for run in runs:
        run.figures = with_ratios(run.figures, {profile.name: base})
    bench = {"engine": ENGINE, "seconds_per_profile": 2.0, "rounds": 3, "volume_bytes": 64 << 20,
             "profiles": [profile.to_json()], "machine": MACHINE, "stores": [r.to_json() for r in runs]}
    return {"machine": MACHINE, "bench": bench, "stores": [], "scenarios": []}


def test_markdown_shows_p99_ratio_engine_rounds_and_machine() -> None:
    doc = _document()
    text = render_markdown(doc)
    ceph = doc["bench"]["stores"][1]["figures"][0]
    assert f"(x{ceph['iops_vs_baseline']:.2f})" in text and f"p99 {ceph['p99_latency_ms']:.3f} ms" in text
    assert "ceph: qemu-nbd --cache=none <rbd uri>" in text
    assert "median of 3 rounds" in text and "Test CPU 9000" in text and "[2.0, 1.5, 1.0] after" in text
    assert "| drbd | skipped: /dev/drbd1 is not on this host |" in text


def test_html_charts_p99_when_the_engine_measured_it() -> None:
    page = render_html(_document())
    assert "rand-write-4k-qd32: p99 latency" in page and "mean latency" not in page
    assert "Latency is per request" in page and "qemu-nbd --cache=none &lt;rbd uri&gt;" in page
