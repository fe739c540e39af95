"""Runs the comparison: capability tables, the I/O profiles (``hvstore.bench.runner``), lockd's own
figures (``lockd.bench``: acquire latency, takeover after a holder's death) and every scenario of
``scenarios/`` on every store. Returns one JSON document; every number in it comes from this run.

sanlock: its figures come from ``lockd bench`` (``lockd.baselines``) when that has them; its takeover
time (over a minute) only in the full run. Where a figure is missing the report says why.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvstore.bench.profiles import QUICK_PROFILES, select_profiles
from hvstore.bench.runner import machine_facts, run_io_bench
from hvstore.config import HvstoreConfig
from hvstore.errors import HvstoreError
from hvstore.scenarios.runner import run_scenario, scenarios_dir
from hvstore.scenarios.spec import Scenario, load_scenario
from hvstore.service import VolumeService

REPORT_VERSION = 1


@dataclass(frozen=True)
class CompareOptions:
    stores: tuple[str, ...]
    quick: bool = False
    seconds_per_profile: float = 3.0
    volume_bytes: int = 256 << 20
    scenario_files: tuple[Path, ...] = ()
    lockd_bench: bool = True

    @classmethod
    def for_mode(cls, stores: list[str], *, quick: bool, seconds: float | None = None,
                 scenarios: list[str] | None = None) -> CompareOptions:
        files = sorted(scenarios_dir().glob("*.yaml"))
        if scenarios:
            files = [f for f in files if f.stem in scenarios]
        return cls(tuple(stores), quick, seconds if seconds is not None else (1.0 if quick else 3.0),
                   (128 << 20) if quick else (256 << 20), tuple(files))


class Hooks:
    """What the CLI shows while it runs: one progress task per part, and log lines."""

    def start(self, part: str, total: int) -> None: ...

    def advance(self, part: str, text: str) -> None: ...

    def log(self, text: str) -> None: ...


# Where lockd's own figures are measured: the first lab lease storage of these types (in this order), in a
# place of its own (RADOS namespace / directory ``LOCKD_BENCH_PLACE``); a file store in a temporary directory
# when there is none.
LOCKD_BENCH_STORE_TYPES = ("rados", "gluster")
LOCKD_BENCH_PLACE = "hvstore-compare"


def _lockd_store(config: HvstoreConfig, scratch: str) -> dict[str, Any]:
    for kind in LOCKD_BENCH_STORE_TYPES:
        for name, table in config.lease_stores.items():
            if table["type"] == kind and (moved := config.lease_store_at(name, LOCKD_BENCH_PLACE)) is not None:
                return moved
    return {"type": "file", "path": scratch}


def _lockd_figures(hvstore_config: HvstoreConfig, quick: bool, hooks: Hooks) -> dict[str, Any]:
    """lockd bench with the lab lockd's default timing, its leases in the lab's distributed lease storage
    (RADOS first) as the daemon would keep them (one CI run's compare died of SIGSEGV here: the RADOS store
    shut its client down under a renewal still running; fixed in lockd.stores.rados); sanlock's own
    takeover takes over a minute: measured in the full run, not with --quick."""
    from lockd.bench import bench
    from lockd.daemon import DaemonConfig

    with tempfile.TemporaryDirectory(prefix="hvstore-compare-lockd-") as tmp:
        config = DaemonConfig(host_id="compare", store=_lockd_store(hvstore_config, tmp), watchdog=False)
        return asyncio.run(bench(config, rounds=50 if quick else 200, lease_counts=(1,) if quick else (1, 100),
                                 takeover=True, sanlock_takeover=not quick,
                                 progress=lambda text: hooks.advance("lockd", text)))


def sanlock_entry(lockd: dict[str, Any], quick: bool) -> dict[str, Any]:
    """sanlock's figures from lockd bench, with a reason wherever the takeover time is missing."""
    sanlock = lockd.get("sanlock")
    if not isinstance(sanlock, dict):
        reason = lockd.get("error") or "this lockd bench has no sanlock figures"
        return {"measured": False, "reason": f"not measured: {reason}"}
    if "takeover_s" not in sanlock:
        why = sanlock.get("error") or ("--quick skips sanlock's takeover (over a minute)" if quick
                                       else "lockd bench returned no sanlock takeover time")
        return {**sanlock, "reason": f"takeover not measured: {why}"}
    return sanlock


def collect(service: VolumeService, options: CompareOptions, hooks: Hooks | None = None) -> dict[str, Any]:
    hooks = hooks or Hooks()
    started = time.monotonic()
    stores = list(options.stores)
    report: dict[str, Any] = {"version": REPORT_VERSION, "quick": options.quick, "machine": machine_facts(),
                              "stores": [], "capabilities": {}}
    for name in stores:
        entry = service.config.store(name)
        report["stores"].append({"name": name, "backend": entry.kind})
        report["capabilities"][name] = entry.backend().capabilities.to_json()

    profiles = select_profiles(list(QUICK_PROFILES) if options.quick else None)
    rounds = 1 if options.quick else 3  # the full run reports the median of three interleaved rounds
    hooks.start("bench", (len(stores) + 1) * len(profiles) * rounds)
    names = {p.name for p in profiles}

    def bench_log(text: str) -> None:
        hooks.log(text)
        if text.rsplit(": ", 1)[-1] in names:
            hooks.advance("bench", text)

    # the cross-check through fio's own engines (no QEMU) only in the full run: --quick stays short
    report["bench"] = run_io_bench(service, stores, profiles, seconds=options.seconds_per_profile, rounds=rounds,
                                   size_bytes=options.volume_bytes, cross_check=not options.quick, log=bench_log)

    if options.lockd_bench:
        hooks.start("lockd", 8)
        try:
            report["lockd"] = _lockd_figures(service.config, options.quick, hooks)
        except Exception as exc:  # lockd's own errors: the report says what failed instead of a figure
            report["lockd"] = {"error": f"{type(exc).__name__}: {exc}"}
    report["sanlock"] = sanlock_entry(report.get("lockd", {}), options.quick)

    scenarios: list[Scenario] = []
    report["scenario_errors"] = []
    for path in options.scenario_files:
        try:
            scenarios.append(load_scenario(path))
        except HvstoreError as exc:
            report["scenario_errors"].append(str(exc))
    hooks.start("scenarios", len(scenarios) * len(stores))
    results = []
    for scenario in scenarios:
        for name in stores:
            hooks.advance("scenarios", f"{scenario.name} on {name}")
            results.append(run_scenario(service, scenario, name, log=hooks.log).to_json())
    report["scenarios"] = results
    report["scenario_descriptions"] = {s.name: s.description for s in scenarios}
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    return report


def default_stores(service: VolumeService) -> list[str]:
    return [entry.name for entry in service.stores()]


Progress = Callable[[str], None]
