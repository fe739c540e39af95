"""``lockd bench``: figures for lockd on a real store (prints numbers; not a test, asserts nothing).

Runs lease managers in this process against the store of a lockd config, in a lockspace of its own
(``bench-<random>``; its records stay in the store, free), with an owner that is a child of this command:

* acquire and release latency (p50/p99) of an exclusive lease, free each time;
* store operations per renewal and this process's RSS while holding 1, 100, ... leases (renewal cost must
  not depend on the number of leases);
* takeover time after host death: a holder manager stops renewing at once (like kill -9 of its lockd) and
  a second manager polls ACQUIRE every ``poll_s`` until it gets the lease.

* the same VM-start sequence libvirt's lock plugin sends (connect, REGISTER, ACQUIRE_RESOURCE, then
  RELEASE_RESOURCE) over the virtlockd protocol, against lockd's own ``RpcServer`` and (``baselines``)
  against libvirt's virtlockd started privately, plus sanlock's figures (``lockd.baselines``), with ratios.
  sanlock's takeover time (about 70 s) only on request.

* the lockd daemon itself (``daemon_leases``): a real ``python -m lockd.daemon`` (what ``lockd serve``
  execs) on the same store, with a private host id, state directory (on tmpfs, /dev/shm, as /run is on a
  host), admin socket and virtlockd-protocol socket, driven over its admin socket like ``lockd acquire``
  (one connection): acquire/release latency as a client sees it, and the daemon's VmRSS idle and while
  it holds each count of leases (after a few renewals). Its leases are released (owner exit) at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lockd.baselines import (
    sanlock_figures,
    stop_daemon,
    summary_ms,
    virtlockd_figures,
    wire_latency,
    wire_setup,
)
from lockd.daemon import DaemonConfig
from lockd.errors import LeaseHeld
from lockd.lease import Heartbeat, Resource, Versioned
from lockd.manager import LeaseManager
from lockd.memory import rss_mib
from lockd.owners import end_stand_in, spawn_stand_in, stand_in
from lockd.stores.base import LeaseStore

STATE_TMPFS = "/dev/shm" if os.path.isdir("/dev/shm") else None  # lockd state dirs on tmpfs, as /run is on a host

class CountingStore(LeaseStore):
    """A LeaseStore that counts the calls it forwards (one call = one store operation here)."""

    def __init__(self, inner: LeaseStore) -> None:
        self.inner = inner
        self.kind = inner.kind  # type: ignore[misc]
        self.calls: Counter[str] = Counter()

    @property
    def describe(self) -> str:
        return self.inner.describe

    def connect(self) -> None:
        self.inner.connect()

    def close(self) -> None:
        self.inner.close()

    def lockspaces(self) -> list[str]:
        self.calls["lockspaces"] += 1
        return self.inner.lockspaces()

    def read_heartbeats(self, lockspace: str) -> dict[str, Heartbeat]:
        self.calls["read_heartbeats"] += 1
        return self.inner.read_heartbeats(lockspace)

    def write_heartbeat(self, lockspace: str, heartbeat: Heartbeat, *, expected: Heartbeat | None) -> None:
        self.calls["write_heartbeat"] += 1
        self.inner.write_heartbeat(lockspace, heartbeat, expected=expected)

    def read_resource(self, lockspace: str, key: str) -> Versioned[Resource] | None:
        self.calls["read_resource"] += 1
        return self.inner.read_resource(lockspace, key)

    def write_resource(self, lockspace: str, record: Resource, *, expected_version: int | None) -> int:
        self.calls["write_resource"] += 1
        return self.inner.write_resource(lockspace, record, expected_version=expected_version)

    def list_resources(self, lockspace: str) -> list[Versioned[Resource]]:
        self.calls["list_resources"] += 1
        return self.inner.list_resources(lockspace)

    def client_id(self) -> str:
        return self.inner.client_id()

    def fence_client(self, lockspace: str, heartbeat: Heartbeat) -> str:
        self.calls["fence_client"] += 1
        return self.inner.fence_client(lockspace, heartbeat)


async def _manager(config: DaemonConfig, host: str, state_root: Path, lockspace: str,
                   store: LeaseStore | None = None) -> LeaseManager:
    manager_config = replace(config.manager_config(), host=host, state_dir=state_root / host,
                             lockspaces=(lockspace,))
    manager = LeaseManager(manager_config, store or config.open_store())
    await manager.start()
    return manager


async def bench(config: DaemonConfig, *, rounds: int = 200, lease_counts: tuple[int, ...] = (1, 100, 1000),
                takeover: bool = True, poll_s: float = 0.1, baselines: bool = True, sanlock_takeover: bool = False,
                daemon_leases: tuple[int, ...] = (),
                progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    lockspace = f"bench-{secrets.token_hex(4)}"
    owner = spawn_stand_in()
    results: dict[str, Any] = {"store": None, "lockspace": lockspace,
                               "timing": {"ttl_s": config.ttl_s, "renew_interval_s": config.renew_interval_s,
                                          "margin_s": config.margin_s}}
    try:
        with tempfile.TemporaryDirectory(prefix="lockd-bench-", dir=STATE_TMPFS) as tmp:
            root = Path(tmp)
            counting = CountingStore(config.open_store())
            a = await _manager(config, "bench-a", root, lockspace, counting)
            results["store"] = a.store.describe
            async with asyncio.TaskGroup() as tg:
                a.run(tg)  # renewing in the background, as in the daemon
                await _latency(a, lockspace, owner.pid, rounds, results, progress)
                floor = results["store_write_ms"] = await _store_floor(counting, lockspace, rounds, progress)
                results["ratios_to_store"] = {
                    f"{op}_{q}": round(results[f"{op}_ms"][q] / floor[q], 2) if floor[q] else None
                    for op in ("acquire", "release") for q in ("p50", "p99")}
                results["wire"] = {"lockd": await _wire_latency(a, root, lockspace, rounds, progress)}
                results["renewal"] = await _renewal_cost(a, counting, lockspace, owner.pid, lease_counts,
                                                         progress)
                progress("releasing")
                for lease in a.leases():
                    await a.release(lease.lockspace, lease.key)
                await a.stop()
            if takeover:
                progress(f"takeover (TTL {config.ttl_s} s)")
                results["takeover_s"] = await _takeover(config, root, lockspace, owner.pid, poll_s)
    finally:
        end_stand_in(owner)
    if daemon_leases:
        results["daemon"] = await asyncio.to_thread(daemon_figures, config, rounds=rounds,
                                                    lease_counts=daemon_leases, progress=progress)
    if baselines:
        results["wire"]["virtlockd"] = await asyncio.to_thread(virtlockd_figures, rounds, progress)
        results["sanlock"] = await asyncio.to_thread(sanlock_figures, rounds, takeover=sanlock_takeover,
                                                     progress=progress)
        results["ratios"] = ratios(results)
    return results


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """lockd's figure divided by the baseline's (below 1: lockd is faster/smaller)."""
    def ratio(ours: float | None, theirs: float | None) -> float | None:
        return round(ours / theirs, 2) if ours is not None and theirs else None

    wire, sanlock = results["wire"], results["sanlock"]
    if "daemon" in results and results["daemon"]["held"]:
        rss = results["daemon"]["held"][-1]["daemon_rss_mib"]  # the daemon holding the most leases
    else:
        rss = results["renewal"][-1]["bench_process_rss_mib"]
    out = {
        "acquire_p50_vs_sanlock": ratio(results["acquire_ms"]["p50"], sanlock["acquire_ms"]["p50"]),
        "acquire_p99_vs_sanlock": ratio(results["acquire_ms"]["p99"], sanlock["acquire_ms"]["p99"]),
        "release_p50_vs_sanlock": ratio(results["release_ms"]["p50"], sanlock["release_ms"]["p50"]),
        "wire_register_acquire_p50_vs_virtlockd": ratio(wire["lockd"]["register_acquire_ms"]["p50"],
                                                        wire["virtlockd"]["register_acquire_ms"]["p50"]),
        "wire_register_acquire_p99_vs_virtlockd": ratio(wire["lockd"]["register_acquire_ms"]["p99"],
                                                        wire["virtlockd"]["register_acquire_ms"]["p99"]),
        "wire_release_p50_vs_virtlockd": ratio(wire["lockd"]["release_ms"]["p50"],
                                               wire["virtlockd"]["release_ms"]["p50"]),
        "rss_vs_virtlockd": ratio(rss, wire["virtlockd"]["daemon_rss_mib"]),
        "rss_vs_sanlock": ratio(rss, sanlock["daemon_rss_mib"]),
    }
    if "takeover_s" in results and "takeover_s" in sanlock:
        out["takeover_vs_sanlock"] = ratio(results["takeover_s"], sanlock["takeover_s"])
    return {k: v for k, v in out.items() if v is not None}


async def _wire_latency(manager: LeaseManager, root: Path, lockspace: str, rounds: int,
                        progress: Callable[[str], None]) -> dict[str, Any]:
    """lockd behind its virtlockd-protocol server on a temporary socket, driven like libvirt's plugin."""
    from lockd.rpc.server import RpcServer
    from lockd.service import VirtlockdService

    progress(f"lockd over the virtlockd protocol: REGISTER+ACQUIRE/RELEASE x{rounds}")
    lease_root = str(root / "leases")
    sock = str(root / "lockd-vl.sock")
    server = RpcServer.bind(sock, VirtlockdService(manager, lease_root=lease_root))
    with stand_in() as owner:  # its own: a closed connection may get its owner killed
        await server.start()
        try:
            await asyncio.to_thread(wire_setup, sock, f"{lease_root}/{lockspace}", owner.pid)
            return await asyncio.to_thread(wire_latency, sock, f"{lease_root}/{lockspace}", owner.pid, rounds)
        finally:
            await server.stop()


async def _latency(manager: LeaseManager, lockspace: str, pid: int, rounds: int, results: dict[str, Any],
                   progress: Callable[[str], None]) -> None:
    progress(f"acquire/release x{rounds}")
    acquire_s, release_s = [], []
    for i in range(rounds):
        t0 = time.perf_counter()
        await manager.acquire(lockspace, f"latency-{i % 10}", pid)
        t1 = time.perf_counter()
        await manager.release(lockspace, f"latency-{i % 10}", pid)
        acquire_s.append(t1 - t0)
        release_s.append(time.perf_counter() - t1)
    results["acquire_ms"] = summary_ms(acquire_s)
    results["release_ms"] = summary_ms(release_s)


async def _store_floor(store: LeaseStore, lockspace: str, rounds: int, progress: Callable[[str], None]
                       ) -> dict[str, float]:
    """The store's own round trip, with no lease logic: a chain of guarded heartbeat writes (what one
    renewal is) in a lockspace of its own. An acquire cannot beat it: it is the floor of acquire_ms."""
    progress(f"store guarded write x{rounds} (the floor)")
    floor_space = f"{lockspace}-floor"
    beat = Heartbeat("bench-floor", secrets.token_hex(6), 0, 60.0, client=store.client_id())
    await asyncio.to_thread(store.write_heartbeat, floor_space, beat, expected=None)
    times = []
    for _ in range(rounds):
        nxt = beat.renewed()
        t0 = time.perf_counter()
        await asyncio.to_thread(store.write_heartbeat, floor_space, nxt, expected=beat)
        times.append(time.perf_counter() - t0)
        beat = nxt
    return summary_ms(times)


async def _renewal_cost(manager: LeaseManager, counting: CountingStore, lockspace: str, pid: int,
                        lease_counts: tuple[int, ...], progress: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    held = 0
    interval = manager.config.timing.renew_interval_s
    for count in lease_counts:
        progress(f"holding {count} leases")
        while held < count:
            await manager.acquire(lockspace, f"held-{held}", pid)
            held += 1
        counting.calls.clear()
        renewals_before = manager.metrics.renewals
        await asyncio.sleep(5 * interval)  # nothing but the background renewals touch the store now
        renewals = max(1, manager.metrics.renewals - renewals_before)
        space = manager.status()["lockspaces"][0]
        rows.append({"leases": count, "store_ops_per_renew": round(sum(counting.calls.values()) / renewals, 2),
                     "renew_ms_last": round((space["last_renew_latency_s"] or 0) * 1e3, 3),
                     "bench_process_rss_mib": rss_mib()})
    return rows


async def _takeover(config: DaemonConfig, root: Path, lockspace: str, pid: int, poll_s: float) -> float:
    holder = await _manager(config, "bench-holder", root, lockspace)
    taker = await _manager(config, "bench-taker", root, lockspace)
    async with asyncio.TaskGroup() as tg:
        holder.run(tg)
        taker.run(tg)
        await asyncio.sleep(config.ttl_s)  # the taker has watched the holder renew for a full TTL
        await holder.acquire(lockspace, "takeover", pid)
        # The holder dies: it stops renewing at once and releases nothing (as after kill -9 of its lockd).
        await holder.stop()
        died = time.monotonic()
        while True:
            try:
                await taker.acquire(lockspace, "takeover", pid)
                break
            except LeaseHeld:
                await asyncio.sleep(poll_s)
        took = time.monotonic() - died
        await taker.stop()
    return round(took, 3)


# -- the daemon process itself ------------------------------------------------------------------------------
class AdminConnection:
    """One blocking connection to a lockd admin socket (requests answered in order, one JSON line each)."""

    def __init__(self, path: str, *, timeout_s: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")

    def call(self, payload: dict[str, Any]) -> Any:
        self.sock.sendall(json.dumps(payload).encode() + b"\n")
        answer = json.loads(self.reader.readline())
        if not answer.get("ok"):
            raise RuntimeError(f"lockd {payload['op']}: {answer.get('error')}")
        return answer["result"]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def daemon_config_text(config: DaemonConfig, *, host_id: str, root: Path, lockspace: str) -> str:
    """A config for a private lockd daemon on ``config``'s store and timing: own state dir and sockets (the
    virtlockd protocol served as on a libvirt host), no outside watchdog, no data-path fencer (nothing here
    is ever taken over)."""
    top = {"host_id": host_id, "ttl_s": config.ttl_s, "renew_interval_s": config.renew_interval_s,
           "margin_s": config.margin_s, "io_timeout_s": config.io_timeout_s, "state_dir": str(root / "state"),
           "admin_socket": str(root / "admin.sock"), "virtlockd_socket": str(root / "virtlockd.sock"),
           "lease_root": str(root / "leases"), "lockspaces": [lockspace], "watchdog": False,
           "log_level": "info"}  # one line per lease event, as in production
    lines = [f"{key} = {_toml_value(value)}" for key, value in top.items()]
    lines += ["", "[store]"] + [f"{key} = {_toml_value(value)}" for key, value in config.store.items()]
    return "\n".join(lines) + "\n"


def daemon_figures(config: DaemonConfig, *, rounds: int, lease_counts: tuple[int, ...],
                   progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Start ``python -m lockd.daemon`` on the store, measure it over its admin socket (blocking)."""
    lockspace = f"bench-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="lockd-bench-daemon-", dir=STATE_TMPFS) as tmp:
        root = Path(tmp)
        host_id = f"bench-daemon-{secrets.token_hex(3)}"
        (root / "lockd.toml").write_text(daemon_config_text(config, host_id=host_id, root=root, lockspace=lockspace))
        repo = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
        progress("lockd daemon: the memory floor under it (interpreter, asyncio, the store's client connected)")
        floor = memory_floor(config, host_id=host_id, env=env)
        with open(root / "daemon.log", "wb") as log:
            daemon = subprocess.Popen([sys.executable, "-m", "lockd.daemon", "-c", str(root / "lockd.toml")],
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        owner = spawn_stand_in()
        admin: AdminConnection | None = None
        try:
            admin = _wait_for_admin(str(root / "admin.sock"), daemon, root / "daemon.log")
            settle_s = 3 * config.renew_interval_s
            time.sleep(settle_s)
            figures: dict[str, Any] = {"lockspace": lockspace, "pid": daemon.pid, **floor,
                                       "rss_idle_mib": rss_mib(daemon.pid)}
            progress(f"lockd daemon: acquire/release over its admin socket x{rounds}")
            acquire_s, release_s = [], []
            for i in range(rounds):
                request = {"lockspace": lockspace, "key": f"latency-{i % 10}", "pid": owner.pid}
                t0 = time.perf_counter()
                admin.call({"op": "acquire", **request})
                t1 = time.perf_counter()
                admin.call({"op": "release", **request})
                acquire_s.append(t1 - t0)
                release_s.append(time.perf_counter() - t1)
            figures["acquire_ms"] = summary_ms(acquire_s)
            figures["release_ms"] = summary_ms(release_s)
            rows, held, new_s = [], 0, []
            for count in lease_counts:
                progress(f"lockd daemon: holding {count} leases")
                while held < count:
                    t0 = time.perf_counter()
                    admin.call({"op": "acquire", "lockspace": lockspace, "key": f"held-{held}", "pid": owner.pid})
                    new_s.append(time.perf_counter() - t0)
                    held += 1
                time.sleep(settle_s)  # a few renewals with that many leases held
                status = admin.call({"op": "status"})
                rss = rss_mib(daemon.pid)
                rows.append({"leases": status["leases"], "daemon_rss_mib": rss,
                             "lockd_own_mib": round(rss - floor["floor_rss_mib"], 1) if rss is not None else None,
                             "threads": _threads(daemon.pid),
                             "renew_ms_last": round((status["lockspaces"][0]["last_renew_latency_s"] or 0) * 1e3, 3)})
            figures["held"] = rows
            if new_s:
                figures["acquire_new_key_ms"] = summary_ms(new_s)
            progress("lockd daemon: releasing (its owner exits)")
            end_stand_in(owner)
            deadline = time.monotonic() + max(60.0, held * 0.02)
            while time.monotonic() < deadline:
                status = admin.call({"op": "status"})
                if status["leases"] == 0 and status["pending_releases"] == 0:
                    break
                time.sleep(0.2)
            return figures
        finally:
            if admin is not None:
                admin.close()
            end_stand_in(owner)
            stop_daemon(daemon)


def memory_floor(config: DaemonConfig, *, host_id: str, env: dict[str, str]) -> dict[str, Any]:
    """``python -m lockd.floor`` on the daemon's store, started as the daemon is (same interpreter, flags and
    environment): the RSS of a process that has everything the daemon has before lockd's own code and leases."""
    request = {"store": config.store, "host_id": host_id, "renew_interval_s": config.renew_interval_s,
               "renewals": 3}
    done = subprocess.run([sys.executable, "-m", "lockd.floor"], input=json.dumps(request), capture_output=True,
                          text=True, env=env, timeout=60 + 3 * config.renew_interval_s)
    if done.returncode != 0:
        raise RuntimeError(f"lockd.floor failed: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout)
    return {"floor_rss_mib": result["rss_mib"], "floor_threads": result["threads"],
            "floor_lockd_modules": result["lockd_modules"]}


def _wait_for_admin(path: str, daemon: subprocess.Popen[bytes], log: Path) -> AdminConnection:
    deadline = time.monotonic() + 30
    while True:
        try:
            admin = AdminConnection(path)
            admin.call({"op": "status"})
            return admin
        except (OSError, RuntimeError, ValueError):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lockd daemon did not start: {log.read_text()[-500:]}") from None
            time.sleep(0.05)


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))
