"""Benchmark: ``hvstore volume import/export`` of a 1 GiB file against the store's native tools, measured
in one run (figures, never pass/fail): on an rbd store against ``rbd import/export`` (the baseline) and
``qemu-img convert``; on any other store against ``qemu-img convert`` to and from ``hvstore volume uri``
(the baseline there). For qemu-img on a non-rbd store the target volume is created first, untimed, and
filled with ``convert -n``, which flatters qemu-img slightly.

The source file is random-ish (no two 4 MiB chunks alike, so nothing compresses or dedups) and partly
sparse: of every four 4 MiB chunks one is a hole, one is half data/half hole, two are full. Every tool
imports the same file into a fresh image and exports that image back to a file, which is compared with
the source (``verified``). Ratios are throughput relative to ``rbd`` (>= 1.0: as fast or faster).

Fairness: the page cache holds the source for every tool alike (it is read once first), dirty pages
are synced before every timed command, the order of the tools rotates per round and each figure is the
best round. What it cannot tell: the lab's single OSD is the bottleneck, and a shared machine is noisy;
compare within one run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvstore.backends.base import Backend
from hvstore.backends.rbd import RbdBackend, RbdConfig
from hvstore.config import StoreEntry
from hvstore.errors import InvalidArgument
from hvstore.run import run
from hvstore.tools.ceph import qemu_rbd_spec

CHUNK = 4 << 20
DEFAULT_SIZE = 1 << 30
TOOL_TIMEOUT_S = 900.0
TOOLS = ("rbd", "qemu-img", "hvstore")


@dataclass(frozen=True)
class Measurement:
    tool: str
    direction: str  # "import" or "export"
    seconds: float  # the best of ``samples`` (the least disturbed by other load on the machine)
    mib_per_s: float  # of the file's apparent size, at ``seconds``
    ratio_vs_baseline: float  # throughput / the baseline tool's throughput in the same direction
    verified: bool  # every export's bytes equal the source
    samples: tuple[float, ...]  # seconds of every round


@dataclass(frozen=True)
class ImportExportResult:
    store: str
    baseline: str  # "rbd" on rbd stores, else "qemu-img"
    size_bytes: int
    data_bytes: int  # allocated in the source file
    hvstore_command: str
    measurements: tuple[Measurement, ...]

    def get(self, tool: str, direction: str) -> Measurement:
        return next(m for m in self.measurements if m.tool == tool and m.direction == direction)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["measurements"] = [dataclasses.asdict(m) for m in self.measurements]
        return data


def hvstore_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m hvstore``."""
    script = Path(sys.executable).with_name("hvstore")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hvstore"]


def make_source_file(path: Path, size_bytes: int) -> tuple[int, str]:
    """Write the test file; return (allocated data bytes, sha256 of its full contents)."""
    pool = os.urandom(CHUNK * 2)
    digest = hashlib.sha256()
    data_bytes = 0
    zeros = bytes(CHUNK)
    with open(path, "wb") as out:
        out.truncate(size_bytes)
        for index, offset in enumerate(range(0, size_bytes, CHUNK)):
            length = min(CHUNK, size_bytes - offset)
            # A different window of the random pool per chunk, stamped with its index: all chunks differ.
            start = (index * 7919) % CHUNK
            chunk = index.to_bytes(8, "little") + pool[start + 8 : start + length]
            kind = index % 4
            if kind == 3:  # hole
                chunk = zeros[:length]
            elif kind == 2:  # half data, half hole
                chunk = chunk[: length // 2] + zeros[: length - length // 2]
                out.seek(offset)
                out.write(chunk[: length // 2])
                data_bytes += length // 2
            else:
                out.seek(offset)
                out.write(chunk)
                data_bytes += length
            digest.update(chunk)
    return data_bytes, digest.hexdigest()


def run_import_export(entry: StoreEntry, config_path: Path, *, workdir: Path, size_bytes: int = DEFAULT_SIZE,
                      tools: tuple[str, ...] = TOOLS, rounds: int = 3, command: list[str] | None = None,
                      log: Callable[[str], None] = lambda _line: None) -> ImportExportResult:
    """Measure import and export of one ``size_bytes`` file with every tool in ``tools`` on ``entry``
    (an rbd store of ``config_path``), ``rounds`` times with the tools interleaved; each figure is the
    best round. Images are named ``bench-<random>-<tool>`` and always removed."""
    if rounds < 1:
        raise InvalidArgument("rounds must be at least 1")
    is_rbd = isinstance(entry.config, RbdConfig)
    baseline = "rbd" if is_rbd else "qemu-img"
    tools = tuple(t for t in tools if is_rbd or t != "rbd")
    command = command or hvstore_command()
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "source.raw"
    log(f"writing {size_bytes >> 20} MiB source file {source}")
    data_bytes, source_digest = make_source_file(source, size_bytes)
    _sha256(source)  # read it once so every tool finds it in the page cache alike
    tag = uuid.uuid4().hex[:8]
    samples: dict[tuple[str, str], list[float]] = {(t, d): [] for t in tools for d in ("import", "export")}
    verified = {tool: True for tool in tools}
    backend = entry.backend()
    try:
        backend.connect()
        for round_no in range(1, rounds + 1):
            # Rotate who goes first: a tool that runs right after another's 1 GiB export would pay
            # for that file's writeback otherwise.
            shift = (round_no - 1) % len(tools)
            for tool in tools[shift:] + tools[:shift]:
                image = f"bench-{tag}-{tool}"
                out = workdir / f"export-{tool}.raw"
                try:
                    if tool == "qemu-img" and not is_rbd:  # convert -n needs the target to exist
                        backend.create(image, size_bytes)
                    imp, exp = _commands(tool, backend, config_path, command, source, image, out)
                    log(f"round {round_no}/{rounds} {tool}: import")
                    samples[(tool, "import")].append(_timed(imp))
                    log(f"round {round_no}/{rounds} {tool}: export")
                    samples[(tool, "export")].append(_timed(exp))
                    verified[tool] = verified[tool] and _sha256(out) == source_digest
                finally:
                    out.unlink(missing_ok=True)
                    if backend.exists(image):
                        backend.delete(image, force=True)
    finally:
        backend.close()
        source.unlink(missing_ok=True)
    measurements = []
    for (tool, direction), times in samples.items():
        best = min(times)
        base = min(samples.get((baseline, direction)) or times)
        measurements.append(Measurement(tool, direction, round(best, 3), round(size_bytes / best / 2**20, 1),
                                        round(base / best, 3), verified[tool], tuple(round(t, 3) for t in times)))
    return ImportExportResult(entry.name, baseline, size_bytes, data_bytes, " ".join(command), tuple(measurements))


def _commands(tool: str, backend: Backend[Any], config_path: Path, command: list[str], source: Path,
              image: str, out: Path) -> tuple[list[str], list[str]]:
    """(import argv, export argv) for ``tool``; on rbd every tool uses the store's user, keyring and conf."""
    store = backend.store
    if tool == "qemu-img" and not isinstance(backend, RbdBackend):
        uri, fmt = backend.uri(image), _qemu_format(backend)
        return (["qemu-img", "convert", "-n", "-f", "raw", "-O", fmt, str(source), uri],
                ["qemu-img", "convert", "-f", fmt, "-O", "raw", uri, str(out)])
    cfg = backend.config
    if tool == "hvstore":
        base = [*command, "--config", str(config_path), "volume"]
        return ([*base, "import", "-q", str(source), f"{store}/{image}"],
                [*base, "export", "-q", f"{store}/{image}", str(out)])
    if tool == "rbd":
        auth = ["--conf", cfg.conf, "--id", cfg.user, *(["--keyring", cfg.keyring] if cfg.keyring else []),
                "--no-progress"]
        return (["rbd", *auth, "import", str(source), f"{cfg.pool}/{image}"],
                ["rbd", *auth, "export", f"{cfg.pool}/{image}", str(out)])
    if tool == "qemu-img":
        spec = qemu_rbd_spec(cfg.pool, image, user=cfg.user, conf=cfg.conf, keyring=cfg.keyring or None)
        return (["qemu-img", "convert", "-f", "raw", "-O", "raw", str(source), spec],
                ["qemu-img", "convert", "-f", "raw", "-O", "raw", spec, str(out)])
    raise InvalidArgument(f"unknown tool {tool!r} (known: {', '.join(TOOLS)})")


def _qemu_format(backend: Backend[Any]) -> str:
    """The format of the store's new volumes (local/gluster qcow2 stores write qcow2), from its config."""
    return str(getattr(backend.config, "format", "raw"))


def _timed(argv: list[str]) -> float:
    os.sync()  # start from clean page cache state: earlier runs' dirty pages are not this tool's cost
    started = time.monotonic()
    run(argv, timeout_s=TOOL_TIMEOUT_S)
    return time.monotonic() - started


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def render(result: ImportExportResult) -> str:
    """A plain table for people (the CLI may render its own from ``to_json``)."""
    lines = [f"store {result.store}: {result.size_bytes >> 20} MiB file, "
             f"{result.data_bytes >> 20} MiB data; best of {len(result.measurements[0].samples)} rounds; "
             f"x base = throughput relative to {result.baseline}",
             f"{'tool':<10} {'direction':<9} {'seconds':>8} {'MiB/s':>8} {'x base':>7}  verified  rounds (s)"]
    for m in result.measurements:
        lines.append(f"{m.tool:<10} {m.direction:<9} {m.seconds:>8.2f} {m.mib_per_s:>8.1f} "
                     f"{m.ratio_vs_baseline:>7.2f}  {'yes' if m.verified else 'NO ':<8}  "
                     + " ".join(f"{t:.2f}" for t in m.samples))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m hvstore.bench.import_export [STORE] [SIZE_MIB] [ROUNDS]`` (``hvstore bench
    import-export`` is the CLI form)."""
    from hvstore.config import load_config

    args = argv if argv is not None else sys.argv[1:]
    config = load_config()
    entry = config.store(args[0] if args else "ceph")
    size = int(args[1]) << 20 if len(args) > 1 else DEFAULT_SIZE
    rounds = int(args[2]) if len(args) > 2 else 3
    workdir = Path(os.environ.get("TMPDIR", "/var/tmp")) / f"hvstore-bench-{uuid.uuid4().hex[:8]}"
    try:
        result = run_import_export(entry, config.path, workdir=workdir, size_bytes=size,
                                   rounds=rounds, log=lambda line: print(line, file=sys.stderr))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
