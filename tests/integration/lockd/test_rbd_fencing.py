"""Data-path fencing on the lab's Ceph: lockd's BackendFencer cuts the dead host's client off an RBD image.

Two writer processes have the image open, like two QEMUs: one as ``client.hostb`` (the dead holder), one
as ``client.hosta`` (the acquirer's new VM, which libvirt opens before it asks for the lease). Fencing hostb
must make hostb's next write fail with ESHUTDOWN (108) and land nothing, and leave hosta writing.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvstore.config import StoreEntry
from lockd.fence import BackendFencer, LeaseRef
from tests.integration.conftest import lab_store

REPO = Path(__file__).resolve().parents[3]
WRITER = """
import signal, sys, time, rados, rbd
conf, keyring, user, pool, image_name, byte, gated = sys.argv[1:8]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # close the image: no watch left to time out
cluster = rados.Rados(conffile=conf, name=f"client.{user}", conf={"keyring": keyring})
cluster.connect()
image = rbd.Image(cluster.open_ioctx(pool), image_name)
offset = 0 if byte == "B" else 4096
print("open", flush=True)
if gated == "yes":
    sys.stdin.readline()  # like a QEMU started paused: its first write comes after the lease is granted
try:
    while True:
        try:
            image.write(byte.encode() * 4096, offset)
            image.flush()
        except rbd.Error as exc:
            print(f"failed {getattr(exc, 'errno', '?')} {type(exc).__name__}", flush=True)
            sys.exit(3)
        print("wrote", flush=True)
        time.sleep(0.02)
finally:
    try:
        image.close()
        cluster.shutdown()
    except Exception:
        pass
"""


@pytest.fixture
def ceph(lab: object) -> StoreEntry:
    return lab_store(lab, "ceph")  # type: ignore[arg-type]


@pytest.fixture
def image(ceph: StoreEntry) -> Iterator[str]:
    name = f"lockd-fence-{uuid.uuid4().hex[:8]}"
    with ceph.backend() as backend:
        backend.create(name, 16 * 2**20)
    yield name
    with ceph.backend() as backend:
        backend.delete(name, force=True)


def writer(ceph: StoreEntry, image: str, host: str, byte: str, *, gated: bool = False) -> subprocess.Popen[str]:
    """A process with the image open as client.<host>, writing ``byte`` every 20 ms (after a line on its
    stdin when ``gated``)."""
    cfg = ceph.config
    keyring = str(Path(cfg.host_keyring_dir) / f"ceph.client.{host}.keyring")  # type: ignore[attr-defined]
    argv = [sys.executable, "-c", WRITER, cfg.conf, keyring, host, cfg.pool, image, byte,  # type: ignore[attr-defined]
            "yes" if gated else "no"]
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "open"
    if not gated:
        assert process.stdout.readline().strip() == "wrote"
    return process


def start_writing(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("go\n")
    process.stdin.flush()
    assert process.stdout.readline().strip() == "wrote"


def test_fencing_the_dead_hosts_watchers_stops_its_writes_and_spares_the_acquirer(
        lab: object, ceph: StoreEntry, image: str) -> None:
    dead = writer(ceph, image, "hostb", "B")
    acquirer = writer(ceph, image, "hosta", "A")
    fencer = BackendFencer(str(lab.config_path), keep_host="hosta")  # type: ignore[attr-defined]
    try:
        with ceph.backend() as backend:
            watchers = {w.addr: w.entity for w in backend.identify_watchers(backend.watchers(image))}
        result = fencer.fence("hostb", LeaseRef(f"hvstore-{ceph.name}", image))
        print(result.detail)
        assert result.done and result.method == "blocklist watchers"
        assert [watchers[addr] for addr in result.fenced] == ["client.hostb"]
        assert dead.stdout is not None and acquirer.stdout is not None
        lines = []
        for line in dead.stdout:  # it may finish a write or two that were acknowledged before the fence
            lines.append(line.strip())
            if line.startswith("failed"):
                break
        assert lines[-1] == "failed 108 ConnectionShutdown"
        assert dead.wait(timeout=30) == 3
        with ceph.backend() as backend, backend.open(image, writable=True) as blockio:
            blockio.write(0, b"C" * 4096)
            blockio.flush()
        # the acquirer keeps writing, and nothing of the fenced writer lands over what came after
        for _ in range(5):
            assert acquirer.stdout.readline().strip() == "wrote"
        with ceph.backend() as backend, backend.open(image) as blockio:
            assert blockio.read(0, 4096) == b"C" * 4096
            assert blockio.read(4096, 4096) == b"A" * 4096
        again = fencer.fence("hostb", LeaseRef(f"hvstore-{ceph.name}", image))
        assert again.done and "no client of hostb" in again.detail  # idempotent
    finally:
        fencer.close()
        for process in (dead, acquirer):
            process.terminate()
            process.wait()


def test_lockspaces_that_name_no_fencing_store_fence_nothing(lab: object) -> None:
    fencer = BackendFencer(str(lab.config_path))  # type: ignore[attr-defined]
    try:
        result = fencer.fence("hostb", LeaseRef("some-lockspace", "disk"))
        assert (result.done, result.method) == (True, "none")
    finally:
        fencer.close()


def test_frozen_holder_host_is_fenced_at_the_storage_before_the_taker_writes(
        lab: object, ceph: StoreEntry, image: str, tmp_path: Path) -> None:
    """Two lockd on RADOS with data-path fencing. hostb's lockd holds the volume's lease for a writer that
    has the image open as client.hostb; then the whole of hostb freezes (lockd, its watchdog and the writer:
    SIGSTOP). hosta takes the lease over after the TTL, which blocklists hostb's writer first. On SIGCONT
    the frozen writer's next write fails with 108 and the taker's data stays."""
    from tests.integration.lockd.test_daemons import Host, wait_for

    cfg = ceph.config
    table = {"type": "rados", "conf": cfg.conf, "pool": cfg.pool, "keyring": cfg.keyring,  # type: ignore[attr-defined]
             "user": cfg.user, "namespace": f"lockd-fence-{uuid.uuid4().hex[:8]}"}  # type: ignore[attr-defined]
    settings = {"fencer": "hvstore", "hvstore_config": str(lab.config_path)}  # type: ignore[attr-defined]
    root = Path(f"/tmp/lockd-fence-{uuid.uuid4().hex[:6]}")
    root.mkdir()
    hosts = {name: Host(name, root, table, settings=settings) for name in ("hosta", "hostb")}
    lockspace = f"hvstore-{ceph.name}"
    frozen: list[int] = []
    dead = acquirer = None
    try:
        for host in hosts.values():
            host.start()
        dead = writer(ceph, image, "hostb", "B")
        hosts["hostb"].call("acquire", lockspace=lockspace, key=image, pid=dead.pid)
        watchdog = subprocess.run(["pgrep", "-f", f"lockd.watchdog {hosts['hostb'].state_dir}"],
                                  capture_output=True, text=True).stdout.split()
        frozen = [hosts["hostb"].process.pid, dead.pid, *map(int, watchdog)]  # type: ignore[union-attr]
        for pid in frozen:
            os.kill(pid, 19)  # SIGSTOP: the whole host freezes
        frozen_at = time.monotonic()
        acquirer = writer(ceph, image, "hosta", "A", gated=True)  # libvirt opens the image before ACQUIRE

        def taken() -> bool:
            try:
                hosts["hosta"].call("acquire", lockspace=lockspace, key=image, pid=acquirer.pid)
                return True
            except Exception:
                return False

        wait_for(taken, what="hosta to take the lease over", timeout_s=20)
        print(f"takeover with data-path fencing {time.monotonic() - frozen_at:.2f} s after the freeze")
        start_writing(acquirer)  # the new VM's CPUs start
        with ceph.backend() as backend, backend.open(image, writable=True) as blockio:
            blockio.write(0, b"C" * 4096)  # the new owner's data where the old one writes
            blockio.flush()
        # Only the writer wakes: hostb's lockd and watchdog stay frozen, so only the storage can stop it.
        os.kill(dead.pid, 18)  # SIGCONT
        frozen.remove(dead.pid)
        assert dead.stdout is not None
        outcome = []
        for line in dead.stdout:  # a write acknowledged just before the freeze may still be reported
            outcome.append(line.strip())
            if line.startswith("failed"):
                break
        assert outcome and outcome[-1] == "failed 108 ConnectionShutdown"
        assert dead.wait(timeout=30) == 3
        with ceph.backend() as backend, backend.open(image) as blockio:
            assert blockio.read(0, 4096) == b"C" * 4096  # nothing of the frozen writer landed after
            assert blockio.read(4096, 4096) == b"A" * 4096
        for pid in frozen:
            os.kill(pid, 18)
        frozen = []
        # hostb wakes: it finds itself evicted (and blocklisted) and drops the lease; hosta keeps it
        wait_for(lambda: hosts["hostb"].call("leases") == [], what="hostb to drop the lease", timeout_s=20)
        assert [le["key"] for le in hosts["hosta"].call("leases")] == [image]
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 18)
        for process in (dead, acquirer):
            if process is not None:
                process.terminate()
                process.wait()
        for host in hosts.values():
            if host.process is not None and host.process.poll() is None:
                host.process.kill()
                host.process.wait()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
