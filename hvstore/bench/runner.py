"""``hvstore bench io``: the workload profiles on every store, through one engine, with a local baseline.

Every store gets a scratch volume (``bench-io-<random>``, always deleted) and every profile of
``hvstore.bench.profiles`` runs on it through ``qemu-img bench -t none -i native|io_uring`` on the
store's own URI and format (``Backend.uri``/``qemu_format``), the same engine for every backend. The
baseline is a raw file in ``/var/tmp`` (or ``workdir``) measured in the same run with the same settings.

Every volume (and the baseline file) is written once in full before the profiles run, so reads read
data. Each profile runs twice: a short pilot to estimate the request rate, then a count scaled so the run
takes about ``seconds``; the figure is the second run. Mean latency is ``seconds x depth / requests``
(Little's law; exact at QD1), not a percentile: qemu-img bench reports only the total time.
Figures only, never pass/fail; ratios are against the baseline of the same run. What it cannot tell:
the lab runs every "node" on one machine, so network stores measure their software path, not a network.
With ``fio`` the same profiles also run through fio where it has an engine for the store (the baseline
file and raw local files: libaio, O_DIRECT; rbd: its rbd engine with ``rbd_cache=false`` as QEMU's
cache=none sets), with true random offsets and a p99 latency: a cross-check of the engine.
A store whose volumes QEMU cannot open on this host (DRBD: the devices are inside the node VMs) gets a
``skipped`` reason instead of figures.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hvstore.bench.profiles import Profile
from hvstore.errors import HvstoreError, InvalidArgument
from hvstore.run import run
from hvstore.service import VolumeService

BASELINE = "baseline"
AIO_MODES = ("native", "io_uring")
MAX_REQUESTS = 5_000_000
_COMPLETED = re.compile(r"Run completed in ([0-9.]+) seconds")

Log = Callable[[str], None]


@dataclass(frozen=True)
class Figure:
    store: str
    profile: str
    requests: int
    seconds: float
    iops: float
    mib_per_s: float
    mean_latency_ms: float
    iops_vs_baseline: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FioFigure:
    """The same profile through fio (true random offsets), where fio has an engine for the store."""

    store: str
    profile: str
    engine: str
    iops: float
    mean_latency_ms: float
    p99_latency_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StoreRun:
    store: str
    backend: str
    qemu_format: str | None = None
    uri_kind: str | None = None  # the URI's scheme (file, rbd, gluster, iscsi)
    figures: list[Figure] = field(default_factory=list)
    skipped: str | None = None  # why this store has no figures
    fio: list[FioFigure] = field(default_factory=list)
    fio_note: str = ""  # why there are no fio figures, or what fio ran with

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "backend": self.backend, "qemu_format": self.qemu_format,
                "uri_kind": self.uri_kind, "skipped": self.skipped, "figures": [f.to_json() for f in self.figures],
                "fio": [f.to_json() for f in self.fio], "fio_note": self.fio_note}


def machine_facts() -> dict[str, Any]:
    """What the figures depend on besides the store: recorded with every run."""
    load1, load5, load15 = os.getloadavg()
    version = run(["qemu-img", "--version"], timeout_s=30).stdout.splitlines()[0]
    mem_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:")), 0)
    return {"hostname": platform.node(), "kernel": platform.release(), "nproc": os.cpu_count(),
            "memory_mib": mem_kib // 1024, "load_average": [round(load1, 2), round(load5, 2), round(load15, 2)],
            "qemu_img": version, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def qemu_img_bench(uri: str, fmt: str, profile: Profile, requests: int, *, aio: str) -> float:
    """One ``qemu-img bench`` run; returns the seconds it reports."""
    argv = ["qemu-img", "bench", "-f", fmt, "-t", "none", "-i", aio, "-c", str(requests), "-d", str(profile.depth),
            "-s", str(profile.block_bytes), "-S", str(profile.step_bytes), *(["-w"] if profile.write else []), uri]
    done = run(argv, timeout_s=600.0)
    match = _COMPLETED.search(done.stdout)
    if not match:
        raise InvalidArgument(f"qemu-img bench printed no time: {done.stdout.strip()[-200:]}")
    return max(float(match.group(1)), 1e-6)


def prefill(uri: str, fmt: str, size_bytes: int) -> None:
    """Write the whole volume once, untimed: reads of never-written blocks of a thin volume cost nothing
    and would flatter every store (a profile list without the writes would otherwise read holes)."""
    fill = Profile("prefill", 1 << 20, 4, True, False, 1)
    qemu_img_bench(uri, fmt, fill, max(1, size_bytes >> 20), aio="threads")


def measure(store: str, uri: str, fmt: str, profile: Profile, *, seconds: float, aio: str) -> Figure:
    """Pilot, then a run scaled to about ``seconds``."""
    pilot = qemu_img_bench(uri, fmt, profile, profile.pilot_requests, aio=aio)
    requests = int(profile.pilot_requests * seconds / pilot)
    requests = max(profile.pilot_requests, min(MAX_REQUESTS, requests - requests % profile.depth or profile.depth))
    took = qemu_img_bench(uri, fmt, profile, requests, aio=aio)
    iops = requests / took
    return Figure(store, profile.name, requests, round(took, 3), round(iops, 1),
                  round(iops * profile.block_bytes / (1 << 20), 2), round(took * profile.depth / requests * 1e3, 4))


def with_ratios(figures: list[Figure], baseline: dict[str, Figure]) -> list[Figure]:
    out = []
    for figure in figures:
        base = baseline.get(figure.profile)
        ratio = round(figure.iops / base.iops, 3) if base and base.iops else None
        out.append(Figure(**{**asdict(figure), "iops_vs_baseline": ratio}))
    return out


def fio_profile(store: str, profile: Profile, target: list[str], engine: str, *, seconds: float,
                env: dict[str, str] | None = None) -> FioFigure:
    """One fio job of ``profile`` on ``target`` (engine options), time-based; figures from fio's JSON."""
    rw = ("rand" if profile.scattered else "") + ("write" if profile.write else "read")
    argv = ["fio", "--name=hvstore", f"--ioengine={engine}", *target, f"--rw={rw}", f"--bs={profile.block_bytes}",
            f"--iodepth={profile.depth}", f"--runtime={max(1, round(seconds))}", "--time_based",
            "--output-format=json", "--randrepeat=0"]
    done = run(argv, timeout_s=seconds * 4 + 120, env=env)
    try:
        job = json.loads(done.stdout[done.stdout.index("{"):])["jobs"][0]["write" if profile.write else "read"]
    except (ValueError, KeyError, IndexError):
        raise InvalidArgument(f"fio printed no figures: {done.stdout.strip()[-200:]}") from None
    p99 = job.get("clat_ns", {}).get("percentile", {}).get("99.000000")
    return FioFigure(store, profile.name, engine, round(job["iops"], 1), round(job["lat_ns"]["mean"] / 1e6, 4),
                     round(p99 / 1e6, 4) if p99 else None)


def _fio_target(backend: Any, name: str, uri: str, fmt: str) -> tuple[str, list[str], dict[str, str]] | str:
    """(engine, options, env) for fio on this volume, or why fio cannot run on it here."""
    if fmt != "raw":
        return f"fio reads raw bytes; this store's volumes are {fmt}"
    if backend.kind == "rbd":
        cfg = backend.config
        env = {"CEPH_CONF": cfg.conf, "CEPH_ARGS": "--rbd_cache=false"}  # as QEMU's cache=none
        if cfg.keyring:
            env["CEPH_KEYRING"] = cfg.keyring
        return "rbd", [f"--clientname={cfg.user}", f"--pool={cfg.pool}", f"--rbdname={name}"], env
    if uri.startswith("/") and Path(uri).is_file():
        return "libaio", [f"--filename={uri}", "--direct=1"], {}
    return f"fio has no engine for {uri.split(':', 1)[0]} volumes here (fio runs on files and rbd)"


def run_fio(result: StoreRun, target: tuple[str, list[str], dict[str, str]] | str, profiles: list[Profile],
            seconds: float, log: Log) -> None:
    if isinstance(target, str):
        result.fio_note = target
        return
    if not shutil.which("fio"):
        result.fio_note = "fio is not installed (Debian: fio)"
        return
    engine, options, env = target
    try:
        for profile in profiles:
            log(f"{result.store}: fio {profile.name}")
            result.fio.append(fio_profile(result.store, profile, options, engine, seconds=seconds, env=env))
        result.fio_note = f"fio --ioengine={engine}" + (" (rbd_cache=false)" if engine == "rbd" else " --direct=1")
    except HvstoreError as exc:
        result.fio.clear()
        result.fio_note = f"fio failed: {exc}"


def run_baseline(profiles: list[Profile], *, size_bytes: int, seconds: float, aio: str, workdir: Path,
                 log: Log, fio: bool = False) -> StoreRun:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"hvstore-bench-io-{uuid.uuid4().hex[:8]}.raw"
    result = StoreRun(BASELINE, "raw file", "raw", "file")
    try:
        run(["qemu-img", "create", "-q", "-f", "raw", str(path), str(size_bytes)], timeout_s=60)
        log(f"{BASELINE}: writing the whole file once")
        prefill(str(path), "raw", size_bytes)
        for profile in profiles:
            log(f"{BASELINE}: {profile.name}")
            result.figures.append(measure(BASELINE, str(path), "raw", profile, seconds=seconds, aio=aio))
        if fio:
            run_fio(result, ("libaio", [f"--filename={path}", "--direct=1"], {}), profiles, seconds, log)
    finally:
        path.unlink(missing_ok=True)
    return result


def run_store(service: VolumeService, store: str, profiles: list[Profile], *, size_bytes: int, seconds: float,
              aio: str, log: Log, fio: bool = False) -> StoreRun:
    """The profiles on one store's scratch volume; a store QEMU cannot reach here gets ``skipped``."""
    entry = service.config.store(store)
    result = StoreRun(store, entry.kind)
    name = f"bench-io-{uuid.uuid4().hex[:8]}"
    try:
        backend = service.backend(store)
        log(f"{store}: creating {name}")
        backend.create(name, size_bytes)
    except HvstoreError as exc:
        result.skipped = f"cannot create a scratch volume: {exc}"
        return result
    try:
        uri = backend.uri(name)
        result.qemu_format = fmt = backend.qemu_format(name)
        result.uri_kind = uri.split(":", 1)[0] if re.match(r"^[a-z+]+:", uri) else "file"
        if result.uri_kind == "file" and not Path(uri).exists():
            result.skipped = f"{uri} is not on this host (the volume lives inside the store's nodes)"
            return result
        log(f"{store}: writing the whole volume once")
        prefill(uri, fmt, size_bytes)
        for profile in profiles:
            log(f"{store}: {profile.name}")
            result.figures.append(measure(store, uri, fmt, profile, seconds=seconds, aio=aio))
        if fio:
            run_fio(result, _fio_target(backend, name, uri, fmt), profiles, seconds, log)
    except HvstoreError as exc:
        result.skipped = f"qemu-img bench failed: {exc}"
        result.figures.clear()  # half a store's figures would compare unlike with like
    finally:
        try:
            backend.delete(name, force=True)
        except HvstoreError as exc:
            log(f"{store}: could not delete {name}: {exc}")
    return result


def run_io_bench(service: VolumeService, stores: list[str], profiles: list[Profile], *, seconds: float = 3.0,
                 size_bytes: int = 256 << 20, aio: str = "native", workdir: Path | None = None,
                 fio: bool = False, log: Log = lambda _line: None) -> dict[str, Any]:
    """Baseline first, then every store; returns the JSON document (machine facts, figures, ratios)."""
    if aio not in AIO_MODES:
        raise InvalidArgument(f"aio must be one of {', '.join(AIO_MODES)}")
    if seconds <= 0:
        raise InvalidArgument("seconds must be positive")
    if not shutil.which("qemu-img"):
        raise InvalidArgument("qemu-img is not installed (Debian: qemu-utils)")
    facts = machine_facts()
    started = time.monotonic()
    baseline = run_baseline(profiles, size_bytes=size_bytes, seconds=seconds, aio=aio,
                            workdir=workdir or Path(os.environ.get("TMPDIR", "/var/tmp")), log=log, fio=fio)
    by_profile = {f.profile: f for f in baseline.figures}
    runs = [baseline]
    for store in stores:
        store_run = run_store(service, store, profiles, size_bytes=size_bytes, seconds=seconds, aio=aio, log=log,
                              fio=fio)
        store_run.figures = with_ratios(store_run.figures, by_profile)
        runs.append(store_run)
    baseline.figures = with_ratios(baseline.figures, by_profile)
    load1, load5, load15 = os.getloadavg()
    facts["load_average_after"] = [round(load1, 2), round(load5, 2), round(load15, 2)]
    return {"engine": f"qemu-img bench -t none -i {aio}", "seconds_per_profile": seconds, "volume_bytes": size_bytes,
            "profiles": [p.to_json() for p in profiles], "machine": facts,
            "elapsed_s": round(time.monotonic() - started, 1), "stores": [r.to_json() for r in runs]}
