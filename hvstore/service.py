"""VolumeService: the library's front door. Parses nothing, trusts nothing, dispatches to backends.

It validates names and sizes, asks the capability table before it dispatches (so an unsupported call
fails the same way on every backend), and owns the operations that are the same everywhere: import and
export through ``Backend.open`` and the crash-safety of builds.

Crash-safety of builds (import, clone): a build holds a per-volume lock file on this host and writes
into ``.partial.NAME`` when the backend can rename (so a half-made volume is recognisable on the store
from any host), renaming it to NAME only when complete. Backends that cannot rename build NAME directly
and record it in a journal file. A later build of the same name, or ``cleanup``, finds a partial or
journaled volume whose lock is free (its builder died) and deletes it. Nothing half-made survives a retry.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hvstore.backends.base import Backend, BlockIO
from hvstore.blocks import zero_runs
from hvstore.config import HvstoreConfig, StoreEntry, state_dir
from hvstore.errors import AlreadyExists, Busy, InvalidArgument, NotFound
from hvstore.imagefile import FileBlockIO, open_image_file
from hvstore.model import (
    PARTIAL_PREFIX,
    Capabilities,
    Feature,
    SnapshotInfo,
    VolumeInfo,
    VolumeRef,
    validate_name,
)

CHUNK_BYTES = 4 << 20
SECTOR = 512
Progress = Callable[[int, int], None]  # (bytes done, bytes total)
_ZEROS = bytes(CHUNK_BYTES)


def _no_progress(done: int, total: int) -> None:
    """Default progress callback: report nothing."""


class VolumeService:
    """Volume operations on the stores of one config. Use as a context manager (closes connections)."""

    def __init__(self, config: HvstoreConfig) -> None:
        self.config = config
        self._backends: dict[str, Backend[Any]] = {}

    def __enter__(self) -> VolumeService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()

    # -- stores -------------------------------------------------------------------------------------
    def stores(self) -> list[StoreEntry]:
        return list(self.config.stores.values())

    def capabilities(self, store: str) -> Capabilities:
        return self.config.store(store).backend().capabilities

    def backend(self, store: str) -> Backend[Any]:
        """The connected backend of ``store`` (connected once per service)."""
        if store not in self._backends:
            backend = self.config.store(store).backend()
            backend.connect()
            self._backends[store] = backend
        return self._backends[store]

    def _require(self, store: str, feature: Feature, operation: str | None = None) -> Backend[Any]:
        backend = self.backend(store)
        if not backend.capabilities.supports(feature):
            raise backend.unsupported(feature, operation)
        return backend

    # -- volumes ------------------------------------------------------------------------------------
    def create(self, ref: VolumeRef, size_bytes: int) -> VolumeInfo:
        _check_size(size_bytes)
        backend = self._require(ref.store, Feature.CREATE)
        return backend.create(ref.name, _round_up(size_bytes))

    def delete(self, ref: VolumeRef, *, force: bool = False) -> None:
        self._require(ref.store, Feature.DELETE).delete(ref.name, force=force)

    def resize(self, ref: VolumeRef, size_bytes: int, *, shrink: bool = False) -> VolumeInfo:
        _check_size(size_bytes)
        backend = self.backend(ref.store)
        current = backend.info(ref.name)
        feature = Feature.SHRINK if size_bytes < current.size_bytes else Feature.GROW
        self._require(ref.store, feature, "shrink" if feature is Feature.SHRINK else "grow")
        return backend.resize(ref.name, _round_up(size_bytes), shrink=shrink)

    def info(self, ref: VolumeRef) -> VolumeInfo:
        return self.backend(ref.store).info(ref.name)

    def list(self, store: str, *, include_partial: bool = False) -> list[VolumeInfo]:
        volumes = self.backend(store).list()
        return [v for v in volumes if include_partial or not v.name.startswith(PARTIAL_PREFIX)]

    def rename(self, ref: VolumeRef, new: VolumeRef) -> VolumeInfo:
        if new.store != ref.store:
            raise InvalidArgument(f"cannot rename across stores ({ref.store} -> {new.store}); use export/import")
        return self._require(ref.store, Feature.RENAME).rename(ref.name, new.name)

    # -- snapshots and clones -----------------------------------------------------------------------
    def snapshot(self, ref: VolumeRef, snap: str) -> SnapshotInfo:
        validate_name(snap, what="snapshot name")
        return self._require(ref.store, Feature.SNAPSHOT).snapshot(ref.name, snap)

    def snapshots(self, ref: VolumeRef) -> list[SnapshotInfo]:
        return self.backend(ref.store).snapshots(ref.name)

    def rollback(self, ref: VolumeRef, snap: str) -> None:
        self._require(ref.store, Feature.ROLLBACK).rollback(ref.name, snap)

    def delete_snapshot(self, ref: VolumeRef, snap: str) -> None:
        self._require(ref.store, Feature.SNAPSHOT, "delete a snapshot").delete_snapshot(ref.name, snap)

    def clone(self, source: VolumeRef, target: VolumeRef) -> VolumeInfo:
        """Clone ``STORE/NAME@SNAP`` to ``STORE/NEW`` (same store)."""
        if source.snapshot is None:
            raise InvalidArgument(f"clone needs a snapshot: {source}@SNAP")
        if target.store != source.store:
            raise InvalidArgument(f"cannot clone across stores ({source.store} -> {target.store}); "
                                  "export the snapshot and import it")
        backend = self._require(source.store, Feature.CLONE)
        snap = source.snapshot
        with self._build(backend, target.name) as build_name:
            backend.clone(source.name, snap, build_name)
        return backend.info(target.name)

    def flatten(self, ref: VolumeRef) -> VolumeInfo:
        return self._require(ref.store, Feature.FLATTEN).flatten(ref.name)

    # -- data ---------------------------------------------------------------------------------------
    def import_file(self, path: Path, target: VolumeRef, *, progress: Progress = _no_progress) -> VolumeInfo:
        """Copy an image file (raw, qcow2, anything qemu-img reads) into a new volume, skipping zeros."""
        backend = self._require(target.store, Feature.IMPORT_EXPORT, "import")
        with open_image_file(path, writable=False) as source:
            size = source.size()
            _check_size(size)
            with self._build(backend, target.name) as build_name:
                backend.create(build_name, _round_up(size))
                with backend.open(build_name, writable=True) as dest:
                    _copy(source, dest, size, progress)
        return backend.info(target.name)

    def export_file(self, source: VolumeRef, path: Path, *, progress: Progress = _no_progress,
                    overwrite: bool = False) -> int:
        """Write the volume's guest-visible bytes to a sparse raw file; returns the bytes exported."""
        backend = self._require(source.store, Feature.IMPORT_EXPORT, "export")
        if path.exists() and not overwrite:
            raise AlreadyExists(f"{path} exists; pass --overwrite to replace it")
        partial = path.with_name(f".{path.name}.partial")
        with backend.open(source.name) as volume:
            size = volume.size()
            try:
                with open(partial, "wb") as created:  # a sparse file of the volume's size: holes stay holes
                    created.truncate(size)
                with FileBlockIO(partial, writable=True) as dest:  # closing fsyncs
                    _copy(volume, dest, size, progress)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        os.replace(partial, path)
        return size

    def open(self, ref: VolumeRef, *, writable: bool = False) -> BlockIO:
        return self.backend(ref.store).open(ref.name, writable=writable)

    # -- crash-safety -------------------------------------------------------------------------------
    def cleanup(self, store: str) -> list[str]:
        """Delete half-made volumes whose builder died; returns their names."""
        backend = self.backend(store)
        removed = []
        for volume in backend.list():
            name = volume.name
            final = name[len(PARTIAL_PREFIX):] if name.startswith(PARTIAL_PREFIX) else name
            journaled = self._journal_path(store, final).exists()
            if not (name.startswith(PARTIAL_PREFIX) or journaled):
                continue
            lock = self._try_build_lock(store, final)
            if lock is None:
                continue  # still being built
            with lock:
                if name.startswith(PARTIAL_PREFIX) or self._journal_path(store, final).exists():
                    with suppress(NotFound):
                        backend.delete(name, force=True)
                    self._journal_path(store, final).unlink(missing_ok=True)
                    removed.append(name)
        return removed

    @contextmanager
    def _build(self, backend: Backend[Any], name: str) -> Iterator[str]:
        """Hold the build lock for ``name``, clear a dead build's leftovers, yield the name to build under,
        and on success make it visible as ``name``; on any failure remove what was made."""
        lock = self._try_build_lock(backend.store, name)
        if lock is None:
            raise Busy(f"volume {backend.store}/{name} is being built by another hvstore process on this host")
        with lock:
            can_rename = backend.capabilities.supports(Feature.RENAME)
            partial = PARTIAL_PREFIX + name
            journal = self._journal_path(backend.store, name)
            if journal.exists():  # an earlier build of this name died mid-way: remove what it left
                with suppress(NotFound):
                    backend.delete(json.loads(journal.read_text())["building"], force=True)
                journal.unlink()
            if can_rename:
                with suppress(NotFound):
                    backend.delete(partial, force=True)
            if backend.exists(name):
                raise AlreadyExists(f"volume {backend.store}/{name} exists already")
            building = partial if can_rename else name
            journal.parent.mkdir(parents=True, exist_ok=True)
            journal.write_text(json.dumps({"building": building, "pid": os.getpid()}))
            half_made_left = False  # the journal must outlive a half-made volume we could not remove
            try:
                yield building
                _crashpoint("build-before-commit")
                if can_rename:
                    backend.rename(building, name)
            except BaseException:
                try:
                    backend.delete(building, force=True)
                except NotFound:
                    pass
                except Exception:
                    half_made_left = True
                raise
            finally:
                if not half_made_left:
                    journal.unlink(missing_ok=True)

    def _journal_path(self, store: str, name: str) -> Path:
        return state_dir() / "builds" / f"{store}--{name}.json"

    def _try_build_lock(self, store: str, name: str) -> _BuildLock | None:
        path = state_dir() / "builds" / f"{store}--{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return _BuildLock(handle)


class _BuildLock:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def __enter__(self) -> _BuildLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def _copy(source: BlockIO, dest: BlockIO, size: int, progress: Progress) -> None:
    """Copy the allocated extents of ``source`` to ``dest`` in chunks, writing only non-zero 64 KiB blocks.

    ``dest`` must read as zeros where nothing is written (a new thin volume, a truncated file).
    """
    done = 0
    progress(0, size)
    for start, length in source.allocated_extents():
        end = min(start + length, size)
        if start > done:
            progress(start, size)
        offset = start
        while offset < end:
            chunk = source.read(offset, min(CHUNK_BYTES, end - offset))
            if chunk != _ZEROS[: len(chunk)]:
                for run_start, run_end, is_zero in zero_runs(chunk):
                    if not is_zero:  # a slice of the whole chunk is the chunk itself, not a copy
                        dest.write(offset + run_start, chunk[run_start:run_end])
            offset += len(chunk)
            progress(offset, size)
        done = end
    dest.flush()
    progress(size, size)


def _crashpoint(name: str) -> None:
    """Fault injection for the crash-safety tests: a real SIGKILL of this process at a chosen point."""
    if os.environ.get("HVSTORE_CRASHPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _round_up(size_bytes: int) -> int:
    return -(-size_bytes // SECTOR) * SECTOR


def _check_size(size_bytes: int) -> None:
    if size_bytes <= 0:
        raise InvalidArgument(f"invalid size {size_bytes}: must be greater than zero")
