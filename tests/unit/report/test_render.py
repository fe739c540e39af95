"""report.md and index.html from a results JSON (tests/data/report/report.json: a real `hvstore compare
--quick` run on the lab's local and ceph stores)."""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from hvstore.report.render import bar_chart, render_html, render_markdown, takeover_rows

DATA = Path(__file__).resolve().parents[2] / "data" / "report" / "report.json"


@pytest.fixture
def report() -> dict[str, Any]:
    return json.loads(DATA.read_text())


def _svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(svg) for svg in re.findall(r"<svg .*?</svg>", page, flags=re.S)]


def test_html_has_every_store_profile_and_scenario(report: dict[str, Any]) -> None:
    page = render_html(report)
    for run in report["bench"]["stores"]:
        assert f">{run['store']}<" in page
    for profile in report["bench"]["profiles"]:
        assert profile["name"] in page
    for result in report["scenarios"]:
        assert f">{result['scenario']}<" in page


def test_html_is_self_contained(report: dict[str, Any]) -> None:
    page = render_html(report)
    without_svg_namespace = page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http://" not in without_svg_namespace and "https://" not in without_svg_namespace
    assert "<script" not in page and "<link" not in page


def test_charts_are_valid_svg_with_one_bar_per_measured_store(report: dict[str, Any]) -> None:
    svgs = _svgs(render_html(report))
    profiles = report["bench"]["profiles"]
    measured = [r for r in report["bench"]["stores"] if not r.get("skipped")]
    ns = "{http://www.w3.org/2000/svg}"
    iops_charts = [s for s in svgs if s.get("aria-label", "").endswith(")") and "IOPS" in s.get("aria-label", "")]
    assert len(iops_charts) == len(profiles)
    for chart in iops_charts:
        assert len(chart.findall(f"{ns}rect")) == len(measured)


def test_bar_lengths_follow_the_figures(report: dict[str, Any]) -> None:
    profile = report["bench"]["profiles"][0]["name"]
    rows = [(r["store"], next(f["iops"] for f in r["figures"] if f["profile"] == profile), "")
            for r in report["bench"]["stores"] if not r.get("skipped")]
    chart = ET.fromstring(bar_chart("t", rows, "IOPS"))
    widths = [float(rect.get("width", 0)) for rect in chart.iter("{http://www.w3.org/2000/svg}rect")]
    order = sorted(range(len(rows)), key=lambda i: rows[i][1])
    assert sorted(range(len(widths)), key=lambda i: widths[i]) == order


def test_a_skipped_store_shows_its_reason_not_a_figure(report: dict[str, Any]) -> None:
    changed = copy.deepcopy(report)
    changed["bench"]["stores"].append({"store": "drbd", "backend": "drbd", "qemu_format": None, "uri_kind": None,
                                       "skipped": "the volume lives inside the store's nodes", "figures": []})
    page, text = render_html(changed), render_markdown(changed)
    assert "skipped: the volume lives inside the store&#x27;s nodes" in page
    assert "| drbd | skipped: the volume lives inside the store's nodes |" in text


def test_sanlock_without_a_figure_says_not_measured(report: dict[str, Any]) -> None:
    changed = copy.deepcopy(report)
    changed["sanlock"] = {"measured": False, "reason": "not measured: no sanlock figure"}
    rows = {label: (seconds, note) for label, seconds, note in takeover_rows(changed)}
    assert rows["sanlock"] == (None, "not measured: no sanlock figure")
    assert "| sanlock | not measured | not measured: no sanlock figure |" in render_markdown(changed)


def test_markdown_carries_machine_facts_and_ratios(report: dict[str, Any]) -> None:
    text = render_markdown(report)
    assert report["machine"]["kernel"] in text
    baseline = next(r for r in report["bench"]["stores"] if r["store"] == "baseline")
    assert f"(x{baseline['figures'][0]['iops_vs_baseline']:.2f})" in text
    for result in report["scenarios"]:
        assert f"**{result['store']}**" in text


def test_scenario_statuses_are_coloured_cells(report: dict[str, Any]) -> None:
    outcome = next(s for s in _svgs(render_html(report)) if s.get("aria-label") == "scenario outcomes")
    labels = [t.text for t in outcome.iter("{http://www.w3.org/2000/svg}text")]
    for result in report["scenarios"]:
        assert result["status"] in labels


def test_fio_cross_check_is_shown_next_to_the_figure(report: dict[str, Any]) -> None:
    changed = copy.deepcopy(report)
    run = changed["bench"]["stores"][0]
    profile = run["figures"][0]["profile"]
    run["fio"] = [{"store": run["store"], "profile": profile, "engine": "libaio", "iops": 4321.0,
                   "mean_latency_ms": 0.2, "p99_latency_ms": 0.987}]
    run["fio_note"] = "fio --ioengine=libaio --direct=1"
    assert "fio 4,321 / p99 0.987 ms" in render_markdown(changed)
    page = render_html(changed)
    assert "fio 4,321 IOPS, p99 0.987 ms" in page and "fio --ioengine=libaio --direct=1" in page
