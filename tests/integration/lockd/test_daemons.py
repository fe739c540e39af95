"""Real ``lockd serve`` processes (two or three host ids on this machine) sharing one lease store.

Run against the file store (a temporary directory), RADOS (the lab's Ceph, a namespace per test), Gluster
(the lab's replica-3 volume through libgfapi, a directory per test) and iSCSI (a fresh LUN on the lab's tgtd,
one initiator per host).
Short timing (TTL 3 s, renew every 0.5 s, margin 1 s) keeps each test to seconds. Waits are bounded
polls. The only time bounds asserted are the safety ones (a takeover never earlier than the holder's TTL
allows; a cut-off holder's owner dead before anyone may take over). How soon a takeover happens is printed,
not asserted: on a loaded 2-core CI machine one Gluster round trip alone has taken seconds.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lockd.cli import request
from lockd.errors import LeaseHeld, LockdError, StoreUnavailable
from tests.integration.conftest import lab_store
from tests.integration.lockd.test_lease_store_contract import (  # noqa: F401 - lease_lun is a fixture
    gluster_config,
    iscsi_config,
    lease_lun,
    rados_config,
)

REPO = Path(__file__).resolve().parents[3]
TTL_S, RENEW_S, MARGIN_S = 3.0, 0.5, 1.0
LS = "hvstore-test"
LIVENESS_S = 60.0  # a bound on waiting for progress, not a figure under test


class Host:
    def __init__(self, name: str, root: Path, store_table: dict[str, Any], *, ttl_s: float = TTL_S,
                 renew_s: float = RENEW_S, margin_s: float = MARGIN_S, io_timeout_s: float = 1.0,
                 settings: dict[str, Any] | None = None) -> None:
        self.name = name
        self.socket = str(root / f"{name}.sock")
        self.log = root / f"{name}.log"
        self.config = root / f"{name}.toml"
        self.state_dir = root / f"run-{name}"
        lines = [f'host_id = "{name}"', f"ttl_s = {ttl_s}", f"renew_interval_s = {renew_s}",
                 f"margin_s = {margin_s}", f"io_timeout_s = {io_timeout_s}", f'state_dir = "{self.state_dir}"',
                 f'admin_socket = "{self.socket}"', f'virtlockd_socket = "{root / (name + ".vl.sock")}"',
                 'lease_root = "/var/lib/libvirt/lockd"', f'lockspaces = ["{LS}"]']
        lines += [f"{k} = {json.dumps(v)}" for k, v in (settings or {}).items()]
        lines += ["", "[store]"]
        lines += [f"{k} = {json.dumps(v.replace('{host}', name) if isinstance(v, str) else v)}"
                  for k, v in store_table.items() if k != "lun_volume"]  # {host}: a per-host value
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "lockd.cli", "serve", "-c", str(self.config)],
                                            stdout=log, stderr=log, env=env, cwd=REPO)
        wait_for(lambda: self._answers(), what=f"lockd {self.name} to answer", timeout_s=20)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"lockd {self.name} exited: {self.log.read_text()[-2000:]}")
        try:
            self.call("status")
            return True
        except LockdError:
            return False

    def call(self, op: str, **args: Any) -> Any:
        return request(self.socket, {"op": op, **args}, timeout_s=20)

    def acquire(self, owner: subprocess.Popen[bytes], key: str = "disk", **args: Any) -> dict[str, Any]:
        return self.call("acquire", lockspace=LS, key=key, pid=owner.pid, **args)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)
        if signum in (signal.SIGKILL, signal.SIGTERM):
            self.process.wait(timeout=20)

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lockd.cli", *argv, "--socket", self.socket],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                              cwd=REPO, timeout=60)


def wait_for(check: Callable[[], bool], *, what: str, timeout_s: float) -> float:
    """Poll ``check`` every 50 ms; return the seconds it took, or fail naming ``what``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture(params=["file", "rados", "gluster", "iscsi"])
def store_table(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    if request.param == "file":
        yield {"type": "file", "path": str(tmp_path / "store")}
        return
    if request.param == "iscsi":
        lun = request.getfixturevalue("lease_lun")
        configs = {host: iscsi_config(lun, host) for host in ("hosta", "hostb", "hostc")}
        yield {"type": "iscsi", "portal": configs["hosta"].portal, "target": configs["hosta"].target,
               "initiator": configs["hosta"].initiator.replace("hosta", "{host}"), "lock_timeout_s": 0.3,
               "lun_volume": lun[1]}
        return
    if request.param == "gluster":
        gcfg = gluster_config(request.getfixturevalue("lab"))
        yield {"type": "gluster", "volume": gcfg.volume, "server": gcfg.server, "port": gcfg.port,
               "root": gcfg.root}
        fuse = lab_store(request.getfixturevalue("lab"), "gluster").config.fuse_mount  # type: ignore[attr-defined]
        shutil.rmtree(Path(fuse) / gcfg.root.lstrip("/"), ignore_errors=True)
        return
    cfg = rados_config(request.getfixturevalue("lab"))
    yield {"type": "rados", "conf": cfg.conf, "pool": cfg.pool, "keyring": cfg.keyring, "user": cfg.user,
            "namespace": f"lockd-it-{uuid.uuid4().hex[:8]}"}


@pytest.fixture
def cluster(tmp_path: Path, store_table: dict[str, Any]) -> Iterator[dict[str, Host]]:
    root = Path(f"/tmp/lockd-it-{uuid.uuid4().hex[:6]}")  # short: UNIX socket paths are limited to 107 bytes
    root.mkdir()
    hosts = {name: Host(name, root, store_table) for name in ("hosta", "hostb", "hostc")}
    try:
        for host in hosts.values():
            host.start()
        yield hosts
    finally:
        for host in hosts.values():
            if host.process is not None and host.process.poll() is None:
                host.process.kill()
                host.process.wait()
        shutil.rmtree(root, ignore_errors=True)  # the hosts' watchdogs exit when their directory goes


def try_acquire(host: Host, proc: subprocess.Popen[bytes], key: str = "disk") -> bool:
    try:
        host.acquire(proc, key)
        return True
    except LeaseHeld:
        return False


def poll_acquire(host: Host, proc: subprocess.Popen[bytes], key: str = "disk") -> bool:
    """For waiting loops: busy, and a store that was slow to answer this once (this machine is shared with
    other services under load), both mean "not yet"."""
    try:
        host.acquire(proc, key)
        return True
    except (LeaseHeld, StoreUnavailable):
        return False


def test_mutual_exclusion_between_three_hosts(cluster: dict[str, Host], spawn_owner: Callable) -> None:
    for key in ("disk-1", "disk-2", "disk-3"):
        winners = [name for name, host in cluster.items() if try_acquire(host, spawn_owner(), key)]
        assert len(winners) == 1, winners
    held = {name: [le["key"] for le in host.call("leases")] for name, host in cluster.items()}
    assert sorted(k for keys in held.values() for k in keys) == ["disk-1", "disk-2", "disk-3"]
    # shared leases: every host may hold one at once; an exclusive request is refused meanwhile
    for host in cluster.values():
        host.acquire(spawn_owner(), "shared-disk", shared=True)
    with pytest.raises(LeaseHeld):
        cluster["hosta"].acquire(spawn_owner(), "shared-disk")


def test_cli_acquire_busy_release_json_and_exit_codes(cluster: dict[str, Host], spawn_owner: Callable) -> None:
    a, b = cluster["hosta"], cluster["hostb"]
    pa, pb = spawn_owner(), spawn_owner()
    done = a.cli("acquire", LS, "disk", "--pid", str(pa.pid), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["token"] >= 1
    busy = b.cli("acquire", LS, "disk", "--pid", str(pb.pid))
    assert busy.returncode == 2
    assert busy.stderr.count("\n") == 1 and "busy" in busy.stderr and "hosta" in busy.stderr
    assert a.cli("release", LS, "disk", "--pid", str(pa.pid)).returncode == 0
    assert b.cli("acquire", LS, "disk", "--pid", str(pb.pid)).returncode == 0
    status = json.loads(b.cli("status", "--json").stdout)
    assert status["host"] == "hostb" and status["leases"] == 1 and status["metrics"]["acquires"] >= 1
    hosts = json.loads(b.cli("hosts", "--json").stdout)
    assert {h["host"] for h in hosts} == {"hosta", "hostb", "hostc"}
    prometheus = b.cli("status", "--prometheus").stdout
    assert 'lockd_leases{host="hostb"} 1' in prometheus
    missing = subprocess.run([sys.executable, "-m", "lockd.cli", "status", "--socket", "/nonexistent.sock"],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert missing.returncode == 1 and missing.stderr.startswith("lockd: cannot reach lockd")


def test_release_on_owner_exit(cluster: dict[str, Host], spawn_owner: Callable) -> None:
    a, b = cluster["hosta"], cluster["hostb"]
    pa = spawn_owner()
    a.acquire(pa)
    assert not try_acquire(b, spawn_owner())
    pa.kill()
    pa.wait()
    taker = spawn_owner()
    wait_for(lambda: poll_acquire(b, taker), what="hostb to get the lease hosta released", timeout_s=10)
    assert a.call("leases") == []


def test_takeover_after_kill_9_of_the_holders_daemon(cluster: dict[str, Host], spawn_owner: Callable) -> None:
    a, b = cluster["hosta"], cluster["hostb"]
    pa = spawn_owner()
    a.acquire(pa)
    taker_owner = spawn_owner()
    a.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    took_s = wait_for(lambda: poll_acquire(b, taker_owner), what="hostb to take over",
                      timeout_s=LIVENESS_S)
    print(f"takeover {took_s:.2f} s after kill -9 (TTL {TTL_S} s, renew interval {RENEW_S} s)")
    # Never before the holder's last renewal (at most one interval before the kill) + TTL.
    assert time.monotonic() - killed_at >= TTL_S - RENEW_S
    # lockd's outside watchdog killed the old owner at hosta's deadline (TTL - margin), before the takeover.
    assert pa.poll() == -signal.SIGKILL
    lease = b.call("leases")[0]
    assert lease["token"] == 2
    assert {h["host"]: h["state"] for h in b.call("hosts")}["hosta"] in ("evicted", "dead")


def test_restart_keeps_leases_and_owners(cluster: dict[str, Host], spawn_owner: Callable) -> None:
    a, b = cluster["hosta"], cluster["hostb"]
    pa = spawn_owner()
    token = a.acquire(pa)["token"]
    for signum in (signal.SIGTERM, signal.SIGKILL):
        a.signal(signum)
        a.start()
        assert [(le["key"], le["token"]) for le in a.call("leases")] == [("disk", token)]
        assert pa.poll() is None
        assert not try_acquire(b, spawn_owner())
    # and the re-adopted owner's exit still releases
    pa.kill()
    pa.wait()
    wait_for(lambda: poll_acquire(b, spawn_owner()), what="hostb to get the released lease", timeout_s=10)


def test_holder_cut_off_from_the_store_kills_its_owner_before_the_ttl(cluster: dict[str, Host],
                                                                      store_table: dict[str, Any],
                                                                      spawn_owner: Callable,
                                                                      request: pytest.FixtureRequest) -> None:
    a = cluster["hosta"]
    pa = spawn_owner()
    a.acquire(pa)
    lun = request.getfixturevalue("lease_lun") if store_table["type"] == "iscsi" else None
    with CutOff(a, store_table, lun):
        cut_at = time.monotonic()
        wait_for(lambda: pa.poll() is not None, what="hosta to self-fence its owner", timeout_s=LIVENESS_S)
        died_s = time.monotonic() - cut_at
    assert pa.returncode == -signal.SIGKILL
    # The last renewal started at most one interval before the cut; the owner must be dead before
    # that start + TTL, when another host could take over.
    margin_s = TTL_S - RENEW_S - died_s
    print(f"owner killed {died_s:.2f} s after the store was cut off; margin before the earliest takeover "
          f">= {margin_s:.2f} s (TTL {TTL_S} s, configured margin {MARGIN_S} s)")
    assert margin_s > 0
    status = a.call("status")
    assert status["metrics"]["self_fences"] == 1 and status["metrics"]["owners_killed"] == 1
    # Once the store is back, the host re-joins under a new incarnation and grants leases again (the
    # record its killed owner held is released or, evicted, taken over).
    again = spawn_owner()
    wait_for(lambda: try_acquire_or_unavailable(a, again), what="hosta to grant leases again", timeout_s=20)
    incarnations = {s["incarnation"] for s in a.call("status")["lockspaces"]}
    assert incarnations.isdisjoint({s["incarnation"] for s in status["lockspaces"]}) or status["lockspaces"]


def try_acquire_or_unavailable(host: Host, proc: subprocess.Popen[bytes]) -> bool:
    try:
        host.acquire(proc)
        return True
    except LockdError:
        return False


class CutOff:
    """Cut one host off the store: hold the file store's lockspace lock (its writes block until the
    deadline passes), or blocklist the host's RADOS client (its next operation fails with ESHUTDOWN, which
    lockd treats as being fenced)."""

    def __init__(self, host: Host, store_table: dict[str, Any], lun: Any = None) -> None:
        self.host, self.table = host, store_table
        self.fd = -1
        self.gluster_file: Any = None
        self.initiator = store_table.get("initiator", "").replace("{host}", host.name)
        self.lun = lun

    def __enter__(self) -> None:
        if self.table["type"] == "file":
            lock = Path(self.table["path"]) / LS / ".lock"
            self.fd = os.open(lock, os.O_RDWR)
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
        elif self.table["type"] == "iscsi":  # out of the LUN's ACL, session closed
            backend, _ = self.lun
            backend.fence_initiator(self.table["lun_volume"], self.initiator)
        elif self.table["type"] == "gluster":  # hold the lockspace's heartbeat file locked: renewals time out
            self.gluster_file = _gluster_heartbeats(self.table)
            self.gluster_file.lock(exclusive=True, wait=True)
        else:
            beat_client = _own_client(self.host, self.table)
            subprocess.run(["ceph", "-c", self.table["conf"], "--keyring", self.table["keyring"],
                            "osd", "blocklist", "add", beat_client], check=True, capture_output=True, timeout=60)

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        if self.gluster_file is not None:
            self.gluster_file.close()  # drops the lock
        if self.table["type"] == "iscsi":
            backend, _ = self.lun
            backend.allow(self.table["lun_volume"], self.initiator)


def _gluster_heartbeats(table: dict[str, Any]) -> Any:
    from hvstore.protocols import gfapi

    mount = gfapi.mount(table["volume"], server=table["server"], port=table["port"])
    return mount.open(f"{table['root']}/{LS}/heartbeats.json", os.O_RDWR)


def _own_client(host: Host, table: dict[str, Any]) -> str:
    from lockd.stores.rados import RadosLeaseStore, RadosStoreConfig, _blocklist_address

    fields = {k: v for k, v in table.items() if k != "type"}
    with RadosLeaseStore(RadosStoreConfig(**fields)) as store:
        return _blocklist_address(store.read_heartbeats(LS)[host.name].client)


def test_sockets_are_private_and_peers_are_checked(cluster: dict[str, Host]) -> None:
    a = cluster["hosta"]
    for path in (a.socket, a.socket.replace(".sock", ".vl.sock")):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # Even if the socket file were opened up, a peer of another uid gets no answer.
    os.chmod(a.socket, 0o666)
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
             "try:\n    s.sendall(b'{\"op\": \"status\"}\\n')\n    print(repr(s.recv(100)))\n"
             "except (ConnectionResetError, BrokenPipeError):\n    print(repr(b''))\n")
    # Debian's python3, not the venv's: the checkout (and so the venv) may sit in a directory nobody cannot enter.
    other = subprocess.run(["/usr/bin/python3", "-c", probe, a.socket], capture_output=True, text=True, timeout=30,
                           user=65534)
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == "b''"
    assert a.call("status")["host"] == "hosta"


def freeze(host: Host, store_table: dict[str, Any]) -> None:
    """SIGSTOP the host's lockd, but never while it holds the file store's lockspace lock: a process
    frozen inside its read-modify-write blocks every writer of the lockspace (a documented limit of the
    file store), which is not what this test is about."""
    for _ in range(100):
        host.signal(signal.SIGSTOP)
        if store_table["type"] == "gluster":
            with _gluster_heartbeats(store_table) as probe:
                if not probe.lock_conflicts(exclusive=True):
                    return
            host.signal(signal.SIGCONT)
            time.sleep(0.01)
            continue
        if store_table["type"] != "file":
            return
        fd = os.open(Path(store_table["path"]) / LS / ".lock", os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:
            host.signal(signal.SIGCONT)
            time.sleep(0.01)
        finally:
            os.close(fd)  # also drops our probe lock
    raise AssertionError("could not freeze lockd outside its store lock")


def test_a_frozen_holder_self_fences_when_it_wakes_after_a_takeover(cluster: dict[str, Host],
                                                                    store_table: dict[str, Any],
                                                                    spawn_owner: Callable) -> None:
    """SIGSTOP freezes the holder's lockd (not its owner or its outside watchdog): the watchdog kills the
    owner at the holder's deadline, before the lease can be taken over after a TTL; on SIGCONT the holder
    finds its heartbeat evicted, drops the lease and re-joins."""
    a, b = cluster["hosta"], cluster["hostb"]
    pa = spawn_owner()
    a.acquire(pa)
    freeze(a, store_table)
    try:
        took_s = wait_for(lambda: poll_acquire(b, spawn_owner()), what="hostb to take over from the frozen hosta",
                          timeout_s=LIVENESS_S)
        print(f"takeover {took_s:.2f} s after hosta froze (TTL {TTL_S} s)")
        assert pa.poll() == -signal.SIGKILL
    finally:
        a.signal(signal.SIGCONT)
    # On waking, hosta either self-fences (deadline passed / heartbeat evicted) or first sees its owner's
    # pidfd report the exit; both drop the lease locally without touching hostb's record.
    wait_for(lambda: a.call("leases") == [], what="hosta to drop the lease after waking", timeout_s=10)
    assert [le["key"] for le in b.call("leases")] == ["disk"]
