"""``hvstore bench io``: the workload profiles on every store through one engine, with a local baseline.

Engine: fio's nbd engine (libnbd) into a private ``qemu-nbd`` that opens the volume's own URI and format
(``Backend.uri``/``qemu_format``) with ``cache=none``, ``aio=native|io_uring``, ``discard=unmap``
(``hvstore.bench.qemu_export``). QEMU's block layer is in the path exactly as for a VM's disk, the
offsets of the ``rand`` profiles are truly random, and every request's latency is measured (mean, p50,
p99). The baseline is a raw file in ``/var/tmp`` (or ``workdir``) served and measured the same way in
the same run, so ratios cancel the engine's own cost and the machine's load.

Order: every volume (and the baseline) is written once in full first, untimed, so reads read data; then
for each profile, each round measures the baseline and every store back to back (interleaved, so a load
change hits all of them alike). A figure is the round with the median IOPS; every round's IOPS is kept.
Optional cross-check (``cross_check``): the same profiles once through fio's own engine where it has one
(libaio O_DIRECT on the baseline file, rbd via librbd), i.e. without QEMU.

What it cannot tell: the lab runs every "node" on one machine, so network stores measure their software
path, not a network. A store whose volumes this host's QEMU cannot open (DRBD: the devices exist only in
the node VMs) gets a ``skipped`` reason instead of figures. Scratch volumes (``bench-io-<random>``) and the
baseline file are always deleted.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hvstore.bench.fio import (
    FioResult,
    FioTarget,
    file_target,
    fill_argv,
    nbd_target,
    parse_fio_json,
    profile_argv,
    rbd_target,
)
from hvstore.bench.profiles import Profile
from hvstore.bench.qemu_export import QemuNbdExport
from hvstore.errors import HvstoreError, InvalidArgument
from hvstore.run import run
from hvstore.service import VolumeService

BASELINE = "baseline"
AIO_MODES = ("native", "io_uring")
ENGINE = "fio nbd -> qemu-nbd"
FILL_TIMEOUT_S = 900.0
# Why fio's own engines do not cross-check these URI kinds here.
NO_CROSS_CHECK = {
    "iscsi": "Debian's fio has no libiscsi engine",
    "gluster": "fio's gfapi engine mounts and unmounts (~10 s glfs_fini) for every job: not run",
}

Log = Callable[[str], None]


@dataclass(frozen=True)
class Figure:
    """One store and profile: what fio measured in the median round, every round's IOPS, and the ratios."""

    store: str
    profile: str
    engine: str
    measured: FioResult  # the median round; its fields are the figure's measured keys in the JSON
    rounds_iops: tuple[float, ...] = ()  # every round's IOPS; the figure is the median round
    iops_vs_baseline: float | None = None
    p99_vs_baseline: float | None = None  # > 1: slower than the baseline at the 99th percentile

    def to_json(self) -> dict[str, Any]:
        """Flat, as the report and the CLI read it: labels, then the measured fields, then rounds and ratios."""
        doc: dict[str, Any] = {}
        for name, value in asdict(self).items():
            if name == "measured":
                doc.update(value)
            else:
                doc[name] = list(value) if isinstance(value, tuple) else value
        return doc


@dataclass
class StoreRun:
    store: str
    backend: str
    qemu_format: str | None = None
    uri_kind: str | None = None  # the URI's scheme (file, rbd, gluster, iscsi)
    engine: str = ""  # the qemu-nbd command line every figure of this store went through
    figures: list[Figure] = field(default_factory=list)
    skipped: str | None = None  # why this store has no figures
    fio: list[Figure] = field(default_factory=list)  # cross-check through fio's own engine, without QEMU
    fio_note: str = ""  # which engine the cross-check used, or why there is none

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "backend": self.backend, "qemu_format": self.qemu_format,
                "uri_kind": self.uri_kind, "engine": self.engine, "skipped": self.skipped,
                "figures": [f.to_json() for f in self.figures], "fio": [f.to_json() for f in self.fio],
                "fio_note": self.fio_note}


@dataclass
class _Target:
    """A store ready to measure: its result, the fio target through qemu-nbd, and the cross-check."""

    result: StoreRun
    export: QemuNbdExport
    main: FioTarget
    cross: FioTarget | str  # fio's own engine, or why there is none
    samples: dict[str, list[FioResult]] = field(default_factory=dict)


def _first_line(argv: list[str]) -> str:
    try:
        return run(argv, timeout_s=30).stdout.strip().splitlines()[0]
    except (HvstoreError, IndexError):
        return "?"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_facts() -> dict[str, Any]:
    """What the figures depend on besides the store: recorded with every run."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:")), 0)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu_model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    return {"hostname": platform.node(), "kernel": platform.release(), "cpu_model": cpu_model,
            "nproc": os.cpu_count(), "memory_mib": mem_kib // 1024, "load_average": _load(),
            "qemu_img": _first_line(["qemu-img", "--version"]), "qemu_nbd": _first_line(["qemu-nbd", "--version"]),
            "fio": _first_line(["fio", "--version"]), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run_fio(argv: list[str], target: FioTarget, *, write: bool, timeout_s: float) -> FioResult:
    return parse_fio_json(run(argv, timeout_s=timeout_s, env=target.env).stdout, write=write)


def median_figure(store: str, profile: str, engine: str, samples: list[FioResult]) -> Figure:
    """The round with the median IOPS (the lower middle one of an even count), with every round's IOPS."""
    ordered = sorted(samples, key=lambda s: s.iops)
    chosen = ordered[(len(ordered) - 1) // 2]
    return Figure(store, profile, engine, chosen, tuple(s.iops for s in samples))


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value is not None and base else None


def with_ratios(figures: list[Figure], baseline: dict[str, Figure]) -> list[Figure]:
    out = []
    for figure in figures:
        base = baseline.get(figure.profile)
        ours, theirs = figure.measured, base.measured if base else None
        out.append(replace(figure, iops_vs_baseline=_ratio(ours.iops, theirs.iops if theirs else None),
                           p99_vs_baseline=_ratio(ours.p99_latency_ms, theirs.p99_latency_ms if theirs else None)))
    return out


def _uri_kind(uri: str) -> str:
    return uri.split(":", 1)[0] if re.match(r"^[a-z+]+:", uri) else "file"


def _export(stack: contextlib.ExitStack, result: StoreRun, uri: str, fmt: str, aio: str) -> QemuNbdExport:
    export = stack.enter_context(QemuNbdExport(uri, fmt, aio=aio))
    settings = [arg for arg in export.argv[:-1] if not arg.startswith("--socket=")]  # the socket is temporary
    result.engine = f"fio --ioengine=nbd -> {' '.join(settings)} <{_uri_kind(uri)} uri>"
    return export


def _prepare_baseline(stack: contextlib.ExitStack, workdir: Path, size_bytes: int, aio: str) -> _Target:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"hvstore-bench-io-{uuid.uuid4().hex[:8]}.raw"
    stack.callback(path.unlink, missing_ok=True)
    run(["qemu-img", "create", "-q", "-f", "raw", str(path), str(size_bytes)], timeout_s=60)
    result = StoreRun(BASELINE, "raw file", "raw", "file")
    export = _export(stack, result, str(path), "raw", aio)
    return _Target(result, export, nbd_target(export.nbd_uri), file_target(str(path)))


def _cross_target(backend: Any, name: str, uri: str, fmt: str) -> FioTarget | str:
    """fio's own engine for this volume (no QEMU), or why there is none here."""
    if fmt != "raw":
        return f"fio's own engines read raw bytes; this store's volumes are {fmt}"
    if backend.kind == "rbd":
        cfg = backend.config
        return rbd_target(pool=cfg.pool, image=name, user=cfg.user, conf=cfg.conf, keyring=cfg.keyring)
    if _uri_kind(uri) == "file":
        return file_target(uri)
    why = NO_CROSS_CHECK.get(_uri_kind(uri), "fio has no engine of its own for it")
    return f"no cross-check for {_uri_kind(uri)}: {why}"


def _prepare_store(stack: contextlib.ExitStack, service: VolumeService, store: str, size_bytes: int, aio: str,
                   log: Log) -> _Target | StoreRun:
    """A scratch volume on ``store`` served by qemu-nbd, or a StoreRun that says why not."""
    result = StoreRun(store, service.config.store(store).kind)
    name = f"bench-io-{uuid.uuid4().hex[:8]}"
    try:
        backend = service.backend(store)
        log(f"{store}: creating {name}")
        backend.create(name, size_bytes)
    except HvstoreError as exc:
        result.skipped = f"cannot create a scratch volume: {exc}"
        return result

    def delete() -> None:
        try:
            backend.delete(name, force=True)
        except HvstoreError as exc:
            log(f"{store}: could not delete {name}: {exc}")

    stack.callback(delete)  # registered before the export: the export stops first
    try:
        uri = backend.uri(name)
        result.qemu_format = fmt = backend.qemu_format(name)
        result.uri_kind = _uri_kind(uri)
        if result.uri_kind == "file" and not Path(uri).exists():
            result.skipped = f"{uri} is not on this host (the volume lives inside the store's nodes)"
            return result
        export = _export(stack, result, uri, fmt, aio)
    except HvstoreError as exc:
        result.skipped = f"qemu-nbd cannot serve the volume: {exc}"
        return result
    return _Target(result, export, nbd_target(export.nbd_uri), _cross_target(backend, name, uri, fmt))


def _fail(target: _Target, what: str, exc: HvstoreError) -> None:
    target.result.skipped = f"{what} failed: {exc}"
    target.samples.clear()  # half a store's figures would compare unlike with like


def _cross_check(target: _Target, profiles: list[Profile], runtime_s: float, log: Log) -> None:
    if isinstance(target.cross, str):
        target.result.fio_note = target.cross
        return
    target.export.stop()  # fio's engine alone on the volume (no idle librbd client holding its lock)
    try:
        for profile in profiles:
            log(f"{target.result.store}: cross-check {target.cross.label} {profile.name}")
            sample = run_fio(profile_argv(target.cross, profile, runtime_s=runtime_s), target.cross,
                             write=profile.write, timeout_s=runtime_s * 4 + 120)
            target.result.fio.append(median_figure(target.result.store, profile.name, target.cross.label, [sample]))
        settings = {"libaio": " --direct=1", "rbd": " (rbd_cache=false)"}.get(target.cross.engine, "")
        target.result.fio_note = f"{target.cross.label}{settings}"
    except HvstoreError as exc:
        target.result.fio.clear()
        target.result.fio_note = f"{target.cross.label} failed: {exc}"


def run_io_bench(service: VolumeService, stores: list[str], profiles: list[Profile], *, seconds: float = 3.0,
                 rounds: int = 1, size_bytes: int = 256 << 20, aio: str = "native", workdir: Path | None = None,
                 cross_check: bool = False, log: Log = lambda _line: None) -> dict[str, Any]:
    """Baseline and every store, interleaved per profile and round; returns the JSON document (machine facts
    with the load before and after, every figure with its engine, ratios against the baseline)."""
    if aio not in AIO_MODES:
        raise InvalidArgument(f"aio must be one of {', '.join(AIO_MODES)}")
    if seconds <= 0:
        raise InvalidArgument("seconds per profile must be positive")
    if rounds < 1:
        raise InvalidArgument("rounds must be at least 1")
    for tool, package in (("fio", "fio"), ("qemu-nbd", "qemu-utils"), ("qemu-img", "qemu-utils")):
        if not shutil.which(tool):
            raise InvalidArgument(f"{tool} is not installed (Debian: {package})")
    facts = machine_facts()
    started = time.monotonic()
    profile_timeout = seconds * 4 + 120
    with contextlib.ExitStack() as stack:
        baseline = _prepare_baseline(stack, workdir or Path(os.environ.get("TMPDIR", "/var/tmp")), size_bytes, aio)
        prepared = [baseline] + [_prepare_store(stack, service, store, size_bytes, aio, log) for store in stores]
        active = [t for t in prepared if isinstance(t, _Target)]
        for target in list(active):
            log(f"{target.result.store}: writing the whole volume once")
            try:
                run(fill_argv(target.main), timeout_s=FILL_TIMEOUT_S)
            except HvstoreError as exc:
                if target is baseline:
                    raise
                _fail(target, "writing the volume", exc)
                active.remove(target)
        for profile in profiles:
            for _round in range(rounds):
                for target in list(active):
                    log(f"{target.result.store}: {profile.name}")
                    argv = profile_argv(target.main, profile, runtime_s=seconds)
                    try:
                        sample = run_fio(argv, target.main, write=profile.write, timeout_s=profile_timeout)
                    except HvstoreError as exc:
                        if target is baseline:
                            raise
                        _fail(target, f"fio {profile.name}", exc)
                        active.remove(target)
                        continue
                    target.samples.setdefault(profile.name, []).append(sample)
        if cross_check:
            for target in active:
                _cross_check(target, profiles, seconds, log)
    # the exports are stopped and the scratch volumes deleted here
    runs = []
    for item in prepared:
        if isinstance(item, StoreRun):
            runs.append(item)
            continue
        item.result.figures = [median_figure(item.result.store, name, ENGINE, samples)
                               for name, samples in item.samples.items()]
        runs.append(item.result)
    by_profile = {f.profile: f for f in baseline.result.figures}
    for store_run in runs:
        store_run.figures = with_ratios(store_run.figures, by_profile)
    facts["load_average_after"] = _load()
    return {"engine": f"{ENGINE} (QEMU block layer: cache=none, aio={aio}, discard=unmap); true random offsets",
            "aio": aio, "seconds_per_profile": seconds, "rounds": rounds, "volume_bytes": size_bytes,
            "profiles": [p.to_json() for p in profiles], "machine": facts,
            "elapsed_s": round(time.monotonic() - started, 1), "stores": [r.to_json() for r in runs]}
