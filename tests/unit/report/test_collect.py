"""sanlock's entry in the report: its figures when lockd bench has them, otherwise the reason."""

from __future__ import annotations

from hvstore.report.collect import sanlock_entry


def test_no_sanlock_figures_says_not_measured() -> None:
    entry = sanlock_entry({"takeover_s": 7.0}, quick=False)
    assert entry["measured"] is False and entry["reason"].startswith("not measured")


def test_failed_lockd_bench_gives_its_error() -> None:
    assert "store down" in sanlock_entry({"error": "store down"}, quick=False)["reason"]


def test_quick_run_without_takeover_explains_it() -> None:
    entry = sanlock_entry({"sanlock": {"acquire_ms": {"p50": 1.0}}}, quick=True)
    assert entry["acquire_ms"] == {"p50": 1.0}
    assert "--quick" in entry["reason"] and "takeover_s" not in entry


def test_measured_takeover_is_kept_as_is() -> None:
    figures = {"acquire_ms": {"p50": 1.0}, "takeover_s": 71.2}
    assert sanlock_entry({"sanlock": figures}, quick=False) == figures
