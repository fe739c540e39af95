"""kill -9 of the CLI during an import and during a clone: a retry succeeds and no orphan remains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from hvstore.config import StoreEntry, load_config
from hvstore.errors import NotFound
from hvstore.model import PARTIAL_PREFIX, Feature, VolumeRef
from hvstore.service import VolumeService

MiB = 1 << 20


def hvstore(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hvstore", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


@pytest.fixture
def service(store: StoreEntry):
    with VolumeService(load_config(os.environ.get("HVSTORE_CONFIG") or None)) as svc:
        yield svc


def leftovers(service: VolumeService, store: str, name: str) -> list[str]:
    return [v.name for v in service.list(store, include_partial=True) if v.name in (name, PARTIAL_PREFIX + name)]


def cleanup(service: VolumeService, ref: VolumeRef) -> None:
    for name in (ref.name, PARTIAL_PREFIX + ref.name):
        try:
            service.delete(VolumeRef(ref.store, name), force=True)
        except NotFound:
            pass


def test_kill_during_import_then_retry(service, store, tmp_path):
    source = tmp_path / "big.raw"
    with source.open("wb") as f:  # non-zero data everywhere, so the import takes a while
        block = os.urandom(MiB)
        for _ in range(192):
            f.write(block)
    ref = VolumeRef(store.name, f"crash-{uuid.uuid4().hex[:8]}")
    try:
        proc = hvstore("volume", "import", "-q", str(source), str(ref))
        deadline = time.monotonic() + 120
        while not leftovers(service, store.name, ref.name):  # the build has started on the store
            assert proc.poll() is None, f"import ended before it could be killed: {proc.communicate()}"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)  # let it write some data
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        retry = hvstore("volume", "import", "-q", str(source), str(ref))
        _, err = retry.communicate(timeout=600)
        assert retry.returncode == 0, err
        assert leftovers(service, store.name, ref.name) == [ref.name]
        exported = tmp_path / "out.raw"
        service.export_file(ref, exported)
        assert subprocess.run(["cmp", "-s", str(source), str(exported)]).returncode == 0
    finally:
        cleanup(service, ref)


def test_kill_during_clone_then_retry(service, store):
    if not service.capabilities(store.name).supports(Feature.CLONE):
        pytest.skip(f"{store.kind} declares no clone support")  # the contract suite checks Unsupported
    origin = VolumeRef(store.name, f"origin-{uuid.uuid4().hex[:8]}")
    copy = VolumeRef(store.name, f"copy-{uuid.uuid4().hex[:8]}")
    try:
        service.create(origin, 32 * MiB)
        with service.open(origin, writable=True) as io:
            io.write(0, b"x" * MiB)
        service.snapshot(origin, "s1")
        # A real SIGKILL at the worst point: the clone exists on the store but is not committed yet.
        proc = hvstore("volume", "clone", f"{origin}@s1", str(copy), env={"HVSTORE_CRASHPOINT": "build-before-commit"})
        proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL
        assert leftovers(service, store.name, copy.name), "the killed clone left nothing to clean up"
        retry = hvstore("volume", "clone", f"{origin}@s1", str(copy))
        _, err = retry.communicate(timeout=300)
        assert retry.returncode == 0, err
        assert leftovers(service, store.name, copy.name) == [copy.name]
        with service.open(copy) as io:
            assert io.read(0, MiB) == b"x" * MiB
    finally:
        cleanup(service, copy)
        cleanup(service, origin)


def test_cleanup_removes_a_dead_build(service, store, tmp_path):
    ref = VolumeRef(store.name, f"dead-{uuid.uuid4().hex[:8]}")
    origin = VolumeRef(store.name, f"origin-{uuid.uuid4().hex[:8]}")
    try:
        service.create(origin, 8 * MiB)
        if service.capabilities(store.name).supports(Feature.CLONE):
            service.snapshot(origin, "s1")
            args = ["volume", "clone", f"{origin}@s1", str(ref)]
        else:
            source = tmp_path / "small.raw"
            source.write_bytes(b"y" * MiB)
            args = ["volume", "import", "-q", str(source), str(ref)]
        proc = hvstore(*args, env={"HVSTORE_CRASHPOINT": "build-before-commit"})
        proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL
        assert leftovers(service, store.name, ref.name)
        removed = service.cleanup(store.name)
        assert any(n.endswith(ref.name) for n in removed)
        assert leftovers(service, store.name, ref.name) == []
    finally:
        cleanup(service, ref)
        cleanup(service, origin)
