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

Not measured here: the lockd daemon's own RSS (the bench process's RSS holds the same manager).
"""

from __future__ import annotations

import asyncio
import resource
import secrets
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lockd.daemon import DaemonConfig
from lockd.errors import LeaseHeld
from lockd.lease import Heartbeat, Resource, Versioned
from lockd.manager import LeaseManager
from lockd.stores.base import LeaseStore


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


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _manager(config: DaemonConfig, host: str, state_root: Path, lockspace: str,
                   store: LeaseStore | None = None) -> LeaseManager:
    manager_config = replace(config.manager_config(), host=host, state_dir=state_root / host,
                             lockspaces=(lockspace,))
    manager = LeaseManager(manager_config, store or config.open_store())
    await manager.start()
    return manager


async def bench(config: DaemonConfig, *, rounds: int = 200, lease_counts: tuple[int, ...] = (1, 100, 1000),
                takeover: bool = True, poll_s: float = 0.1, baselines: bool = True, sanlock_takeover: bool = False,
                progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    lockspace = f"bench-{secrets.token_hex(4)}"
    owner = subprocess.Popen(["sleep", "3600"])
    results: dict[str, Any] = {"store": None, "lockspace": lockspace,
                               "timing": {"ttl_s": config.ttl_s, "renew_interval_s": config.renew_interval_s,
                                          "margin_s": config.margin_s}}
    try:
        with tempfile.TemporaryDirectory(prefix="lockd-bench-") as tmp:
            root = Path(tmp)
            counting = CountingStore(config.open_store())
            a = await _manager(config, "bench-a", root, lockspace, counting)
            results["store"] = a.store.describe
            async with asyncio.TaskGroup() as tg:
                a.run(tg)  # renewing in the background, as in the daemon
                await _latency(a, lockspace, owner.pid, rounds, results, progress)
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
        owner.kill()
        owner.wait()
    if baselines:
        from lockd.baselines import sanlock_figures, virtlockd_figures

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
        "rss_vs_virtlockd": ratio(results["renewal"][-1]["bench_process_rss_mib"],
                                  wire["virtlockd"]["daemon_rss_mib"]),
        "rss_vs_sanlock": ratio(results["renewal"][-1]["bench_process_rss_mib"], sanlock["daemon_rss_mib"]),
    }
    if "takeover_s" in results and "takeover_s" in sanlock:
        out["takeover_vs_sanlock"] = ratio(results["takeover_s"], sanlock["takeover_s"])
    return {k: v for k, v in out.items() if v is not None}


async def _wire_latency(manager: LeaseManager, root: Path, lockspace: str, rounds: int,
                        progress: Callable[[str], None]) -> dict[str, Any]:
    """lockd behind its virtlockd-protocol server on a temporary socket, driven like libvirt's plugin."""
    from lockd.baselines import wire_latency, wire_setup
    from lockd.rpc.server import RpcServer
    from lockd.service import VirtlockdService

    progress(f"lockd over the virtlockd protocol: REGISTER+ACQUIRE/RELEASE x{rounds}")
    lease_root = str(root / "leases")
    sock = str(root / "lockd-vl.sock")
    server = RpcServer.bind(sock, VirtlockdService(manager, lease_root=lease_root))
    owner = subprocess.Popen(["sleep", "3600"])  # its own: a closed connection may get its owner killed
    await server.start()
    try:
        await asyncio.to_thread(wire_setup, sock, f"{lease_root}/{lockspace}", owner.pid)
        return await asyncio.to_thread(wire_latency, sock, f"{lease_root}/{lockspace}", owner.pid, rounds)
    finally:
        await server.stop()
        owner.kill()
        owner.wait()


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
    for name, values in (("acquire_ms", acquire_s), ("release_ms", release_s)):
        results[name] = {"p50": round(statistics.median(values) * 1e3, 3),
                         "p99": round(percentile(values, 0.99) * 1e3, 3)}


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
                     "bench_process_rss_mib": round(rss_mib(), 1)})
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
