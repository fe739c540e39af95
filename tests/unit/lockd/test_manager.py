"""LeaseManager against the real file store, with real owner processes and an injected clock.

The renew loop is not running in most tests: they call one renewal (``_renew``) or one watchdog check
(``check_deadlines``) at chosen clock values, so nothing here waits for a TTL.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from lockd.errors import ConfigError, InvalidRequest, LeaseHeld, NotFound
from lockd.fence import FenceResult, LeaseRef
from lockd.lease import LeaseTiming, Mode
from lockd.manager import LeaseManager, ManagerConfig
from lockd.stores.file import FileLeaseStore

TIMING = LeaseTiming(ttl_s=8.0, renew_interval_s=1.0, margin_s=2.0)
LS = "hvstore-local"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def manager(tmp_path: Path, host: str, clock: Clock) -> LeaseManager:
    config = ManagerConfig(host=host, timing=TIMING, io_timeout_s=2.0, state_dir=tmp_path / f"run-{host}",
                           lockspaces=(LS,))
    return LeaseManager(config, FileLeaseStore(tmp_path / "store"), clock=clock)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def advance(clock: Clock, seconds: float, *renewing: LeaseManager) -> None:
    """Move the clock in renew-interval steps; the given managers renew at each step (the others are
    frozen, like a stopped host)."""
    steps = int(seconds / TIMING.renew_interval_s)
    rest = seconds - steps * TIMING.renew_interval_s
    for _ in range(steps):
        clock.now += TIMING.renew_interval_s
        for m in renewing:
            for space in list(m._spaces.values()):
                await m._renew(space)
    clock.now += rest


def killed(child: subprocess.Popen[bytes]) -> bool:
    try:
        return child.wait(timeout=5) == -signal.SIGKILL
    except subprocess.TimeoutExpired:
        return False


def test_acquire_release_and_local_conflicts(tmp_path: Path, clock: Clock, spawn_owner: Callable) -> None:
    async def scenario() -> None:
        a = manager(tmp_path, "hosta", clock)
        await a.start()
        p1, p2 = spawn_owner(), spawn_owner()
        lease = await a.acquire(LS, "disk", p1.pid)
        assert (lease.mode, lease.token) == (Mode.EXCLUSIVE, 1)
        assert (await a.acquire(LS, "disk", p1.pid)).token == 1  # idempotent
        with pytest.raises(LeaseHeld, match="on this host"):
            await a.acquire(LS, "disk", p2.pid)
        await a.release(LS, "disk", p1.pid)
        assert a.leases() == []
        assert (await a.peek(LS, "disk")).free
        shared = await a.acquire(LS, "disk", p1.pid, mode=Mode.SHARED)
        await a.acquire(LS, "disk", p2.pid, mode=Mode.SHARED)
        assert {p.pid for p in shared.owners} == {p1.pid, p2.pid}
        await a.release(LS, "disk", p1.pid)
        assert (await a.peek(LS, "disk")).holders  # p2 still holds it
        with pytest.raises(NotFound):
            await a.release(LS, "disk", p1.pid)
        await a.release(LS, "disk")
        assert (await a.peek(LS, "disk")).free
        with pytest.raises(NotFound):
            await a.release(LS, "disk")
        await a.stop()

    run(scenario())


def test_invalid_requests(tmp_path: Path, clock: Clock) -> None:
    async def scenario() -> None:
        a = manager(tmp_path, "hosta", clock)
        await a.start()
        with pytest.raises(InvalidRequest, match="no process"):
            await a.acquire(LS, "disk", 2**22 + 12345)
        with pytest.raises(InvalidRequest):
            await a.acquire("bad/space", "disk", 1)
        with pytest.raises(InvalidRequest):
            await a.fence_host("hosta")
        await a.stop()

    run(scenario())


def test_busy_while_holder_renews_then_takeover_after_a_ttl(tmp_path: Path, clock: Clock,
                                                            spawn_owner: Callable) -> None:
    async def scenario() -> None:
        a, b = manager(tmp_path, "hosta", clock), manager(tmp_path, "hostb", clock)
        await a.start()
        await b.start()
        pa, pb = spawn_owner(), spawn_owner()
        await a.acquire(LS, "disk", pa.pid)
        # hosta renews every second for 20 s: hostb is refused every time, at once.
        for _ in range(20):
            await advance(clock, 1.0, a, b)
            with pytest.raises(LeaseHeld) as busy:
                await b.acquire(LS, "disk", pb.pid)
        assert busy.value.retry_after_s is not None and busy.value.retry_after_s <= TIMING.ttl_s
        assert "alive" in busy.value.reason
        # hosta stops renewing: still busy before a full TTL of observation, taken over after.
        await advance(clock, TIMING.ttl_s - 1.0, b)
        with pytest.raises(LeaseHeld, match="not renewing"):
            await b.acquire(LS, "disk", pb.pid)
        assert not a.check_deadlines() < 0 and killed(pa)  # hosta's own deadline (TTL - margin) passed
        await advance(clock, 1.0, b)
        lease = await b.acquire(LS, "disk", pb.pid)
        assert lease.token == 2
        assert b.metrics.takeovers == 1
        await advance(clock, 1.0, b)
        assert {h["host"]: h["state"] for h in b.hosts()}["hosta"] == "evicted"
        await a.stop()
        await b.stop()

    run(scenario())


def test_evicted_holder_kills_its_owners_on_its_next_renewal(tmp_path: Path, clock: Clock,
                                                             spawn_owner: Callable) -> None:
    """A holder that was frozen (no renewals, no watchdog) and wakes after the takeover learns it from the
    failed heartbeat compare-and-swap and self-fences at once."""
    async def scenario() -> None:
        a, b = manager(tmp_path, "hosta", clock), manager(tmp_path, "hostb", clock)
        await a.start()
        await b.start()
        pa, pb = spawn_owner(), spawn_owner()
        await a.acquire(LS, "disk", pa.pid)
        await advance(clock, TIMING.ttl_s, b)
        await b.acquire(LS, "disk", pb.pid)
        old_incarnation = a._spaces[LS].incarnation
        await a._renew(a._spaces[LS])  # fails: evicted
        assert killed(pa)
        assert a.leases() == [] and a.metrics.self_fences == 1
        assert a._spaces[LS].incarnation != old_incarnation
        await a._renew(a._spaces[LS])  # re-joins with the new incarnation
        record = await b.peek(LS, "disk")
        assert [h.host for h in record.holders] == ["hostb"]
        await a.stop()
        await b.stop()

    run(scenario())


def test_renewing_holder_beats_a_taker_whose_decision_is_stale(tmp_path: Path, clock: Clock,
                                                               spawn_owner: Callable) -> None:
    """The eviction is a compare-and-swap on the exact counter judged dead: if the holder renewed in
    between, the taker's eviction fails and it answers busy. To get a taker that judges a holder dead while
    the holder is still within its deadline, the taker's clock runs twice as fast (drift beyond the
    margin): the compare-and-swap still protects the holder."""
    async def scenario() -> None:
        fast = Clock()
        a, b = manager(tmp_path, "hosta", clock), manager(tmp_path, "hostb", fast)
        await a.start()
        await b.start()
        pa, pb = spawn_owner(), spawn_owner()
        await a.acquire(LS, "disk", pa.pid)
        for _ in range(int(TIMING.ttl_s)):
            clock.now += 0.5  # hosta: 4 s pass, within its 6 s deadline, without a renewal
            await advance(fast, 1.0, b)
        original_observe = b._observe

        async def observe_then_holder_renews(space: Any) -> Any:
            beats = await original_observe(space)
            await a._renew(a._spaces[LS])  # hosta renews right after each of b's reads
            return beats

        b._observe = observe_then_holder_renews  # type: ignore[method-assign]
        with pytest.raises(LeaseHeld):
            await b.acquire(LS, "disk", pb.pid)
        assert pa.poll() is None and a.leases()
        assert [h.host for h in (await b.peek(LS, "disk")).holders] == ["hosta"]
        assert b.metrics.takeovers == 0
        await a.stop()
        await b.stop()

    run(scenario())


def test_self_fence_at_ttl_minus_margin_from_the_renewal_start(tmp_path: Path, clock: Clock,
                                                               spawn_owner: Callable) -> None:
    async def scenario() -> None:
        a = manager(tmp_path, "hosta", clock)
        await a.start()
        p = spawn_owner()
        await a.acquire(LS, "disk", p.pid)
        start = clock.now
        await a._renew(a._spaces[LS])
        clock.now = start + TIMING.self_fence_after_s - 0.01
        a.check_deadlines()
        assert p.poll() is None and a.leases()
        clock.now = start + TIMING.self_fence_after_s
        a.check_deadlines()
        assert killed(p)
        assert a.leases() == [] and a.status()["metrics"]["owners_killed"] == 1
        await a._renew(a._spaces[LS])  # re-join, then the orphaned record is released
        await a._retry_releases()
        assert (await a.peek(LS, "disk")).free
        await a.stop()

    run(scenario())


def test_restart_in_time_readopts_everything(tmp_path: Path, clock: Clock, spawn_owner: Callable) -> None:
    async def scenario() -> None:
        a = manager(tmp_path, "hosta", clock)
        await a.start()
        p = spawn_owner()
        lease = await a.acquire(LS, "disk", p.pid)
        incarnation = a._spaces[LS].incarnation
        assert len(list((tmp_path / "run-hosta" / "leases").glob("*.json"))) == 1  # one small file per lease
        await a.stop()
        clock.now += TIMING.self_fence_after_s / 2
        again = manager(tmp_path, "hosta", clock)
        await again.start()
        assert [(le.key, le.token, le.incarnation) for le in again.leases()] == [("disk", lease.token,
                                                                                   incarnation)]
        await again._renew(again._spaces[LS])
        assert again._spaces[LS].incarnation == incarnation and p.poll() is None
        await again.release(LS, "disk", p.pid)
        assert (await again.peek(LS, "disk")).free
        assert list((tmp_path / "run-hosta" / "leases").glob("*.json")) == []
        await again.stop()

    run(scenario())


def test_restart_too_late_kills_first(tmp_path: Path, clock: Clock, spawn_owner: Callable) -> None:
    async def scenario() -> None:
        a = manager(tmp_path, "hosta", clock)
        await a.start()
        p = spawn_owner()
        await a.acquire(LS, "disk", p.pid)
        await a.stop()
        clock.now += TIMING.self_fence_after_s + 0.1
        again = manager(tmp_path, "hosta", clock)
        await again.start()
        assert killed(p)
        assert again.leases() == []
        await again._retry_releases()
        assert (await again.peek(LS, "disk")).free
        await again.stop()

    run(scenario())


def test_owner_exit_releases_through_pidfd(tmp_path: Path, spawn_owner: Callable) -> None:
    async def scenario() -> None:
        a = LeaseManager(ManagerConfig(host="hosta", state_dir=tmp_path / "run"), FileLeaseStore(tmp_path / "s"))
        await a.start()
        p = spawn_owner()
        await a.acquire(LS, "disk", p.pid)
        async with asyncio.TaskGroup() as tg:
            a.run(tg)
            p.kill()
            p.wait()
            async with asyncio.timeout(10):  # released in the background: nobody waits for an exited owner
                while a.leases() or not (await a.peek(LS, "disk")).free:
                    await asyncio.sleep(0.01)
            await a.stop()

    run(scenario())


def test_operator_fence_allows_immediate_takeover(tmp_path: Path, clock: Clock, spawn_owner: Callable) -> None:
    async def scenario() -> None:
        a, b = manager(tmp_path, "hosta", clock), manager(tmp_path, "hostb", clock)
        await a.start()
        await b.start()
        pa, pb = spawn_owner(), spawn_owner()
        await a.acquire(LS, "disk", pa.pid)
        with pytest.raises(LeaseHeld):
            await b.acquire(LS, "disk", pb.pid)
        done = await b.fence_host("hosta")
        assert done[0]["host"] == "hosta" and done[0]["actions"]
        assert (await b.acquire(LS, "disk", pb.pid)).token == 2
        with pytest.raises(NotFound):
            await b.fence_host("nosuchhost")
        await a.stop()
        await b.stop()

    run(scenario())


def test_one_lockd_per_state_directory(tmp_path: Path, clock: Clock) -> None:
    async def scenario() -> None:
        first = manager(tmp_path, "hosta", clock)
        await first.start()
        with pytest.raises(ConfigError, match="another lockd"):
            await manager(tmp_path, "hosta", clock).start()
        await first.stop()
        again = manager(tmp_path, "hosta", clock)
        await again.start()
        await again.stop()

    run(scenario())


class RecordingFencer:
    """A Fencer that fences nothing and remembers whom it was asked to fence."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def fence(self, host: str, lease: LeaseRef) -> FenceResult:
        self.calls.append((host, str(lease)))
        return FenceResult(True, "none", "recorded")


def test_takeover_fences_the_dead_host_never_this_one(tmp_path: Path, clock: Clock, spawn_owner: Callable) -> None:
    async def scenario() -> None:
        fencer = RecordingFencer()
        a = manager(tmp_path, "hosta", clock)
        b = LeaseManager(ManagerConfig(host="hostb", timing=TIMING, state_dir=tmp_path / "run-hostb",
                                       lockspaces=(LS,)), FileLeaseStore(tmp_path / "store"), fencer, clock=clock)
        await a.start()
        await b.start()
        pa, pb = spawn_owner(), spawn_owner()
        await a.acquire(LS, "disk", pa.pid)
        await advance(clock, TIMING.ttl_s, b)
        await b.acquire(LS, "disk", pb.pid)
        assert fencer.calls == [("hosta", f"{LS}/disk")]
        # hostb self-fences (its store "stops answering"), re-joins, and takes its own old record back
        # after a TTL: that must not fence hostb itself.
        await b.release(LS, "disk")  # (so only the stale record is left, as after a crash mid-release)
        await b.acquire(LS, "disk", pb.pid)
        clock.now += TIMING.self_fence_after_s
        b.check_deadlines()
        assert b.leases() == []
        b._releasing.clear()  # the background release never got through
        await advance(clock, TIMING.ttl_s, b)
        pb2 = spawn_owner()
        lease = await b.acquire(LS, "disk", pb2.pid)
        assert lease.token > 2
        assert fencer.calls == [("hosta", f"{LS}/disk")]
        await a.stop()
        await b.stop()

    run(scenario())


def test_reacquire_after_own_release_skips_the_read_but_sees_other_hosts(tmp_path: Path, clock: Clock,
                                                                         spawn_owner: Callable) -> None:
    """An exclusive release and an acquire of a record this host released last write without reading it
    first (one store operation each); the write is guarded by the version we wrote, so a change by another
    host in between is still seen (busy, or a fresh read and a higher token)."""
    from lockd.bench import CountingStore

    async def scenario() -> None:
        counting = CountingStore(FileLeaseStore(tmp_path / "store"))
        config = ManagerConfig(host="hosta", timing=TIMING, io_timeout_s=2.0, state_dir=tmp_path / "run-hosta",
                               lockspaces=(LS,))
        a = LeaseManager(config, counting, clock=clock)
        b = manager(tmp_path, "hostb", clock)
        await a.start()
        await b.start()
        p1, p2 = spawn_owner(), spawn_owner()
        first = await a.acquire(LS, "disk", p1.pid)
        await a.release(LS, "disk", p1.pid)
        counting.calls.clear()
        again = await a.acquire(LS, "disk", p1.pid)
        await a.release(LS, "disk", p1.pid)
        assert again.token == first.token + 2  # the release wrote token + 1
        assert counting.calls == {"write_resource": 2}
        taken = await b.acquire(LS, "disk", p2.pid)  # changes the record a released last
        with pytest.raises(LeaseHeld, match="hostb"):
            await a.acquire(LS, "disk", p1.pid)
        await b.release(LS, "disk", p2.pid)
        counting.calls.clear()
        latest = await a.acquire(LS, "disk", p1.pid)
        assert latest.token > taken.token
        assert counting.calls["read_resource"] == 1  # not ours last: read before the write
        assert (await a.peek(LS, "disk")).holders == (a._spaces[LS].me,)
        await a.stop()
        await b.stop()

    run(scenario())
