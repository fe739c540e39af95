"""fio command lines and fio's JSON output: text in, data out (``hvstore.bench.runner`` runs them).

Every figure of ``hvstore bench io`` comes from fio 3.x's ``--output-format=json``: ``total_ios``,
``runtime`` (ms), ``iops``, ``bw_bytes`` and the total latency (``lat_ns``: submission to completion)
with ``--lat_percentiles=1`` so p50/p99 describe the same latency as the mean. fio's nbd engine
prints ``fio: connected to NBD server`` before the JSON: the parser starts at the first ``{``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hvstore.bench.profiles import Profile
from hvstore.errors import InvalidArgument

FILL_BLOCK_BYTES = 1 << 20
FILL_DEPTH = 4


@dataclass(frozen=True)
class FioTarget:
    """What fio opens: its engine and the options that name the volume (plus environment for librbd)."""

    engine: str
    options: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"fio {self.engine}"


@dataclass(frozen=True)
class FioResult:
    """What one fio run of one profile measured; a runner ``Figure`` holds one (its JSON keys are these)."""

    requests: int
    seconds: float
    iops: float
    mib_per_s: float
    mean_latency_ms: float
    p50_latency_ms: float | None
    p99_latency_ms: float | None


def nbd_target(uri: str) -> FioTarget:
    """fio's nbd engine (libnbd) on an NBD URI such as ``nbd+unix:///disk?socket=/run/x.sock``."""
    return FioTarget("nbd", (f"--uri={uri}",))


def file_target(path: str) -> FioTarget:
    """libaio with O_DIRECT on a raw file: the kernel path without QEMU (cross-check only)."""
    return FioTarget("libaio", (f"--filename={path}", "--direct=1"))


def rbd_target(*, pool: str, image: str, user: str, conf: str, keyring: str | None) -> FioTarget:
    """fio's rbd engine (librbd without QEMU); ``rbd_cache=false`` as QEMU's cache=none sets (cross-check)."""
    env = {"CEPH_CONF": conf, "CEPH_ARGS": "--rbd_cache=false"}
    if keyring:
        env["CEPH_KEYRING"] = keyring
    return FioTarget("rbd", (f"--clientname={user}", f"--pool={pool}", f"--rbdname={image}"), env)


def _common(target: FioTarget, name: str) -> list[str]:
    return ["fio", f"--name={name}", f"--ioengine={target.engine}", *target.options, "--output-format=json"]


def profile_argv(target: FioTarget, profile: Profile, *, runtime_s: float) -> list[str]:
    """One time-based fio job of ``profile`` over the whole volume (true random offsets for ``rand``)."""
    return [*_common(target, profile.name), f"--rw={profile.fio_rw}", f"--bs={profile.block_bytes}",
            f"--iodepth={profile.depth}", f"--runtime={max(1, round(runtime_s * 1000))}ms", "--time_based",
            "--randrepeat=0", "--lat_percentiles=1", "--percentile_list=50:99"]


def fill_argv(target: FioTarget) -> list[str]:
    """Write the whole volume once, sequentially (fio takes the size from the NBD server/image/file)."""
    return [*_common(target, "fill"), "--rw=write", f"--bs={FILL_BLOCK_BYTES}", f"--iodepth={FILL_DEPTH}"]


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 4)


def _percentile(lat: dict[str, Any], which: str) -> float | None:
    value = (lat.get("percentile") or {}).get(which)
    return float(value) if value is not None else None


def parse_fio_json(stdout: str, *, write: bool) -> FioResult:
    """The figures of the first job's read or write side. Raises InvalidArgument on anything else."""
    start = stdout.find("{")
    if start < 0:
        raise InvalidArgument(f"fio printed no JSON: {stdout.strip()[-200:]}")
    try:
        job = json.loads(stdout[start:])["jobs"][0]
        side = job["write" if write else "read"]
        requests, runtime_ms = int(side["total_ios"]), float(side["runtime"])
        iops, bw_bytes, lat = float(side["iops"]), float(side["bw_bytes"]), side["lat_ns"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise InvalidArgument(f"fio's JSON has no {'write' if write else 'read'} figures: "
                              f"{stdout.strip()[-200:]}") from None
    if job.get("error"):
        raise InvalidArgument(f"fio job failed with error {job['error']}")
    if requests <= 0 or runtime_ms <= 0:
        raise InvalidArgument("fio completed no request")
    # fio 3.x puts the percentiles under lat_ns with --lat_percentiles=1, under clat_ns otherwise
    pct_source = lat if lat.get("percentile") else side.get("clat_ns", {})
    return FioResult(requests, round(runtime_ms / 1000, 3), round(iops, 1), round(bw_bytes / (1 << 20), 2),
                     round(float(lat["mean"]) / 1e6, 4), _ms(_percentile(pct_source, "50.000000")),
                     _ms(_percentile(pct_source, "99.000000")))
