"""The lease manager: holds leases for local owner processes, heartbeats, watches liveness, takes over from
dead hosts, and self-fences. It carries out the decisions of ``lockd.lease`` against a ``LeaseStore``.

Lifecycle: constructed (stores config) -> ``await start()`` (connects the store, re-adopts persisted state)
-> ``run(task_group)`` (starts the renew, watchdog and release loops in the daemon's task group) ->
``await stop()`` (stops renewing; keeps every lease and owner for the next start).

* Renewal is per host and lockspace, not per lease: every ``renew_interval_s`` one guarded heartbeat write
  and one read of every host's heartbeat (liveness), whatever the number of leases.
* ACQUIRE answers at once: granted, ``LeaseHeld`` (busy, with reason and retry-after) or, when every
  conflicting holder is confirmed dead, a takeover: evict its heartbeat by compare-and-swap on the exact
  counter judged dead (a renewal in flight then loses), cut off its store client (``fence_client``), fence
  the volume's data path (``Fencer``), then compare-and-swap the record (token + 1).
* Store operations per ACQUIRE: a read of the record and one guarded write; no read when this host
  released that record last (its version is remembered, ``FREE_RECORDS_KEPT``); heartbeats are read only
  when the record names other holders. An exclusive RELEASE is one guarded write (the record is known).
  A stale guess only costs a failed write and the read it skipped: the write is guarded either way.
* Self-fence: when no renewal started within the last TTL - margin has been acknowledged, or our heartbeat
  was evicted, every owner holding a lease in that lockspace gets SIGKILL (through its pidfd) and the
  lockspace is re-joined with a new incarnation; records still naming the old one are released.
* Owners are processes (pid + start time); their exit (pidfd readable) releases their leases (in the
  background: nobody waits for an exited owner's thousands of leases).
* State is persisted in ``state_dir``: ``state.json`` (incarnations, last heartbeat, deadline, pending
  releases; rewritten after every renewal, small) and one file per held lease under ``leases/`` (written when
  that lease changes). A restarted lockd on the same boot re-adopts it (same incarnation, continues the
  counter), so a restart within TTL - margin kills nobody and drops no lease; later, it self-fences first.
  ``lockd.watchdog`` reads the same files to kill owners when lockd itself is dead or frozen.
* Safety does not depend on the store being fast: a renewal never waits for the acquire/release mutex, and
  store calls that time out are treated as failed (a write that lands later is reconciled: a record naming
  us without a local owner is released in the background).

All store calls run in threads (``asyncio.to_thread``) under ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lockd.errors import (
    ConfigError,
    FenceFailed,
    InvalidRequest,
    LeaseHeld,
    LeaseLost,
    LockdError,
    NotFound,
    StoreUnavailable,
    VersionConflict,
)
from lockd.fence import Fencer, LeaseRef, NoFencer
from lockd.lease import (
    Busy,
    Grant,
    Heartbeat,
    LeaseTiming,
    LivenessTracker,
    Mode,
    Owner,
    RenewalDeadline,
    Resource,
    TakeOver,
    Versioned,
    decide_acquire,
    decide_release,
    validate_host_id,
    validate_key,
    validate_lockspace,
)
from lockd.owners import ProcessHandle, ProcessRef
from lockd.state import STATE_FILE, STATE_VERSION, boot_id, lease_state_path, read_lease_states, write_state
from lockd.stores.base import LeaseStore

log = logging.getLogger("lockd")

T = TypeVar("T")
ACQUIRE_ATTEMPTS = 3  # CAS retries when another host changes the record between our read and write
FREE_RECORDS_KEPT = 1024  # records this host released last, remembered to acquire them again without a read


def _attempts(known: Versioned[Resource] | None) -> list[Versioned[Resource] | None]:
    """What each compare-and-swap attempt on a record starts from: ``known`` first when we have it (a record
    as we wrote it, at its version: no read), then None = read it afresh, ACQUIRE_ATTEMPTS times."""
    return ([known] if known is not None else []) + [None] * ACQUIRE_ATTEMPTS


@dataclass(frozen=True)
class ManagerConfig:
    host: str
    timing: LeaseTiming = field(default_factory=LeaseTiming)
    io_timeout_s: float = 2.0
    fence_timeout_s: float = 30.0
    state_dir: Path = Path("/run/lockd")
    lockspaces: tuple[str, ...] = ()  # joined at start, so their hosts are watched from the beginning

    def __post_init__(self) -> None:
        validate_host_id(self.host)
        for lockspace in self.lockspaces:
            validate_lockspace(lockspace)
        if not 0 < self.io_timeout_s < self.timing.self_fence_after_s:
            raise InvalidRequest(f"io_timeout_s {self.io_timeout_s} must be > 0 and below ttl_s - margin_s")


@dataclass(slots=True)
class HeldLease:
    """One lease this host holds. Compact (slots, owners a tuple: nearly always one process), because a
    host may hold tens of thousands; ``lockspace`` and ``incarnation`` are shared strings, the owner
    ``ProcessRef``s the manager's canonical ones."""

    lockspace: str
    key: str
    mode: Mode
    token: int
    version: int
    incarnation: str
    owners: tuple[ProcessRef, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"lockspace": self.lockspace, "key": self.key, "mode": self.mode.value, "token": self.token,
                "version": self.version, "incarnation": self.incarnation,
                "owners": [p.to_json() for p in sorted(self.owners)]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> HeldLease:
        return cls(str(data["lockspace"]), str(data["key"]), Mode(data["mode"]), int(data["token"]),
                   int(data["version"]), str(data["incarnation"]),
                   tuple(sorted({ProcessRef.from_json(p) for p in data["owners"]})))


class LeaseTable:
    """The leases this host holds, by (lockspace, key). Nested per lockspace, so a held lease costs no
    (lockspace, key) tuple of its own: a host may hold tens of thousands."""

    def __init__(self) -> None:
        self._by_space: dict[str, dict[str, HeldLease]] = {}
        self._count = 0

    def get(self, ref: tuple[str, str]) -> HeldLease | None:
        leases = self._by_space.get(ref[0])
        return leases.get(ref[1]) if leases is not None else None

    def __contains__(self, ref: tuple[str, str]) -> bool:
        return self.get(ref) is not None

    def __setitem__(self, ref: tuple[str, str], lease: HeldLease) -> None:
        leases = self._by_space.setdefault(ref[0], {})
        self._count += ref[1] not in leases
        leases[ref[1]] = lease

    def __delitem__(self, ref: tuple[str, str]) -> None:
        leases = self._by_space[ref[0]]
        del leases[ref[1]]
        self._count -= 1
        if not leases:
            del self._by_space[ref[0]]

    def __len__(self) -> int:
        return self._count

    def values(self) -> Iterator[HeldLease]:
        for leases in self._by_space.values():
            yield from leases.values()

    def count_in(self, lockspace: str) -> int:
        return len(self._by_space.get(lockspace, ()))


@dataclass
class Space:
    """This host's membership of one lockspace."""

    name: str
    host: str
    incarnation: str
    tracker: LivenessTracker
    deadline: RenewalDeadline
    heartbeat: Heartbeat | None = None  # as we last wrote it: the compare-and-swap expectation
    last_renew_latency_s: float | None = None
    last_ack_at: float | None = None
    renew_failures: int = 0
    join_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # the renew loop and an acquire may race

    @property
    def me(self) -> Owner:
        return Owner(self.host, self.incarnation)


@dataclass
class Metrics:
    acquires: int = 0
    acquire_busy: int = 0
    takeovers: int = 0
    releases: int = 0
    renewals: int = 0
    renew_failures: int = 0
    self_fences: int = 0
    fences: int = 0
    owners_killed: int = 0
    renew_latency_sum_s: float = 0.0
    renew_latency_max_s: float = 0.0
    acquire_latency_sum_s: float = 0.0
    acquire_latency_max_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "acquires": self.acquires, "acquire_busy": self.acquire_busy, "takeovers": self.takeovers,
            "releases": self.releases, "renewals": self.renewals, "renew_failures": self.renew_failures,
            "self_fences": self.self_fences, "fences": self.fences, "owners_killed": self.owners_killed,
            "renew_latency_avg_s": round(self.renew_latency_sum_s / self.renewals, 6) if self.renewals else None,
            "renew_latency_max_s": round(self.renew_latency_max_s, 6),
            "acquire_latency_avg_s": (round(self.acquire_latency_sum_s / self.acquires, 6)
                                      if self.acquires else None),
            "acquire_latency_max_s": round(self.acquire_latency_max_s, 6),
        }


class LeaseManager:
    def __init__(self, config: ManagerConfig, store: LeaseStore, fencer: Fencer | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.store = store
        self.fencer: Fencer = fencer or NoFencer()
        self.clock = clock
        self.metrics = Metrics()
        self.started_at = clock()
        self._spaces: dict[str, Space] = {}
        self._leases = LeaseTable()
        self._releasing: dict[tuple[str, str], str] = {}  # record still names us (incarnation): release it
        # (lockspace, key) -> (token, version) of the free record we wrote when we last released it, oldest
        # first: an acquire guards its write with that version instead of reading the record first.
        self._released: dict[tuple[str, str], tuple[int, int]] = {}
        self._handles: dict[ProcessRef, ProcessHandle] = {}
        self._exited: list[ProcessRef] = []  # owners seen gone before run() had a task group
        self._mutex = asyncio.Lock()
        self._tg: asyncio.TaskGroup | None = None
        self._wake = asyncio.Event()
        self._client_id = ""
        self._stopping = False
        self._state_lock_fd = -1
        self._me = ProcessRef.of_pid(os.getpid())

    # ------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect the store and re-adopt persisted state (killing nobody if we are back in time)."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_state_dir()
        await self._io("connect", self.store.connect)
        self._client_id = await self._io("client id", self.store.client_id)
        self._readopt()
        for lockspace in self.config.lockspaces:
            self._space(lockspace)
        for space in list(self._spaces.values()):
            try:
                await self._ensure_joined(space)
            except LockdError as error:
                log.warning("cannot join lockspace %s yet: %s", space.name, error)

    def run(self, tg: asyncio.TaskGroup) -> None:
        """Start the background loops in the daemon's task group."""
        self._tg = tg
        tg.create_task(self._renew_loop(), name="lockd-renew")
        tg.create_task(self._watchdog_loop(), name="lockd-watchdog")
        tg.create_task(self._release_loop(), name="lockd-release")
        for handle in list(self._handles.values()):
            self._watch_fd(handle)
        for process in self._exited:
            self._background(self.release_owner(process))
        self._exited.clear()

    async def stop(self) -> None:
        """Stop renewing but keep every lease and owner: the next lockd re-adopts them."""
        self._stopping = True
        self._wake.set()
        self._persist()
        loop = asyncio.get_running_loop()
        for handle in self._handles.values():
            loop.remove_reader(handle.fd)
            handle.close()
        self._handles.clear()
        await asyncio.to_thread(self.store.close)
        if self._state_lock_fd >= 0:
            os.close(self._state_lock_fd)
            self._state_lock_fd = -1

    # ------------------------------------------------------------------------------------- verbs

    async def acquire(self, lockspace: str, key: str, pid: int, *, mode: Mode = Mode.EXCLUSIVE) -> HeldLease:
        """Grant ``lockspace/key`` to process ``pid`` now, or raise LeaseHeld at once (never waits a TTL).

        Idempotent for the same pid and mode. Raises InvalidRequest (bad names, no such process),
        LeaseHeld, StoreUnavailable, FenceFailed.
        """
        validate_lockspace(lockspace)
        validate_key(key)
        lockspace = sys.intern(lockspace)  # one string per lockspace, not one per lease held
        process = ProcessRef.of_pid(pid)
        handle = self._handles.get(process)
        if handle is not None:
            process = handle.process  # the canonical instance: one per owner, not one per lease held
        started = self.clock()
        async with self._mutex:
            lease = await self._acquire_locked(lockspace, key, process, mode)
        elapsed = self.clock() - started
        self.metrics.acquires += 1
        self.metrics.acquire_latency_sum_s += elapsed
        self.metrics.acquire_latency_max_s = max(self.metrics.acquire_latency_max_s, elapsed)
        return lease

    async def release(self, lockspace: str, key: str, pid: int | None = None) -> None:
        """Drop ``pid``'s holding of the lease (every local owner's when pid is None). When no local owner
        is left, the record is released in the store (retried in the background if the store is down).
        Raises NotFound when this host (or that pid) does not hold it."""
        async with self._mutex:
            lease = self._leases.get((lockspace, key))
            if lease is None:
                raise NotFound(f"this host holds no lease {lockspace}/{key}")
            if pid is None:
                gone = set(lease.owners)
            else:
                gone = {p for p in lease.owners if p.pid == pid}
                if not gone:
                    raise NotFound(f"pid {pid} does not hold {lockspace}/{key}")
            lease.owners = tuple(p for p in lease.owners if p not in gone)
            log.info("release %s/%s pid=%s owners_left=%d", lockspace, key,
                     ",".join(str(p.pid) for p in sorted(gone)), len(lease.owners))
            if not lease.owners:
                await self._drop_lease(lease)
            self._sync_lease(lockspace, key)
            self._forget_unused_handles()
            self._persist()

    async def release_owner(self, process: ProcessRef) -> None:
        """An owner exited: release everything it held."""
        async with self._mutex:
            for lease in [le for le in self._leases.values() if process in le.owners]:
                lease.owners = tuple(p for p in lease.owners if p != process)
                log.info("owner pid=%d exited: drops %s/%s", process.pid, lease.lockspace, lease.key)
                if not lease.owners:
                    await self._drop_lease(lease, wait=False)
                self._sync_lease(lease.lockspace, lease.key)
            self._forget_unused_handles()
            self._persist()

    async def release_pid(self, pid: int, *, kill: bool = False) -> int:
        """Release every lease held by process ``pid`` (optionally SIGKILLing it first, if it still runs and
        held any); returns how many holdings were dropped."""
        processes = {p for le in self._leases.values() for p in le.owners if p.pid == pid}
        if kill:
            for process in processes:
                handle = self._handles.get(process)
                if handle is not None:
                    handle.kill()
                    self.metrics.owners_killed += 1
        for process in processes:
            await self.release_owner(process)
        return len(processes)

    def status_lockspaces(self) -> list[str]:
        """Lockspaces this host has joined (or will re-join)."""
        return sorted(self._spaces)

    def held(self, lockspace: str, key: str) -> HeldLease | None:
        """This host's holding of a lease, if any."""
        return self._leases.get((lockspace, key))

    async def peek(self, lockspace: str, key: str) -> Resource | None:
        """The lease's record as the store has it now (None: never written)."""
        validate_lockspace(lockspace)
        validate_key(key)
        current = await self._read_record(lockspace, key)
        return current.value if current else None

    async def fence_host(self, host: str, *, lockspace: str | None = None) -> list[dict[str, Any]]:
        """Operator-forced fence: evict ``host``'s heartbeat now (no TTL wait), cut off its store client and
        fence the data path of every lease it holds, so its leases can be taken over at once."""
        validate_host_id(host)
        if host == self.config.host:
            raise InvalidRequest(f"refusing to fence this host ({host}) from itself")
        names = [validate_lockspace(lockspace)] if lockspace else sorted(self._spaces)
        done = []
        for name in names:
            space = await self._ensure_joined(self._space(name))
            beats = await self._io(f"read heartbeats of {name}", self.store.read_heartbeats, name)
            victim = beats.get(host)
            if victim is None:
                continue
            if victim.evicted_by is None:
                await self._io(f"evict {host} from {name}", self.store.write_heartbeat, name,
                               victim.evicted(space.me), expected=victim)
            actions = await self._fence(name, victim, keys=None)
            await self._observe(space)
            done.append({"lockspace": name, "host": host, "incarnation": victim.incarnation, "actions": actions})
        if not done:
            raise NotFound(f"host {host} has no heartbeat in {', '.join(names) or 'any joined lockspace'}")
        return done

    # ------------------------------------------------------------------------------------- queries

    def leases(self) -> list[HeldLease]:
        return sorted(self._leases.values(), key=lambda le: (le.lockspace, le.key))

    def hosts(self) -> list[dict[str, Any]]:
        now = self.clock()
        rows = []
        for name, space in sorted(self._spaces.items()):
            for liveness in space.tracker.hosts(now):
                row = {"lockspace": name, **liveness.to_json(), "self": liveness.owner.host == self.config.host}
                rows.append(row)
        return rows

    def status(self) -> dict[str, Any]:
        now = self.clock()
        spaces = []
        for name, space in sorted(self._spaces.items()):
            spaces.append({
                "lockspace": name, "incarnation": space.incarnation,
                "counter": space.heartbeat.counter if space.heartbeat else None,
                "joined": space.heartbeat is not None,
                "since_last_renew_s": round(now - space.last_ack_at, 3) if space.last_ack_at else None,
                "self_fence_in_s": _round(space.deadline.remaining_s(now)),
                "last_renew_latency_s": _round(space.last_renew_latency_s, 6),
                "watched_s": round(space.tracker.watched_s, 3),
                "leases": self._leases.count_in(name),
            })
        timing = self.config.timing
        return {
            "host": self.config.host, "store": self.store.describe, "pid": os.getpid(),
            "uptime_s": round(now - self.started_at, 3),
            "timing": {"ttl_s": timing.ttl_s, "renew_interval_s": timing.renew_interval_s,
                       "margin_s": timing.margin_s, "io_timeout_s": self.config.io_timeout_s},
            "leases": len(self._leases), "owners": len({p for le in self._leases.values() for p in le.owners}),
            "pending_releases": len(self._releasing), "lockspaces": spaces, "metrics": self.metrics.to_json(),
        }

    # ------------------------------------------------------------------------------------- acquire internals

    async def _acquire_locked(self, lockspace: str, key: str, process: ProcessRef, mode: Mode) -> HeldLease:
        held = self._leases.get((lockspace, key))
        if held is not None:
            return self._add_local_owner(held, process, mode)
        space = await self._ensure_joined(self._space(lockspace))
        self._require_healthy(space)
        me = space.me
        # If we released it last: the free record we wrote, at the version the store gave it. Our write below is
        # guarded by that version, so it lands on exactly that record or fails (someone changed it since),
        # and then we read it like any other.
        released = self._released.pop((lockspace, key), None)
        known = Versioned(Resource(key, token=released[0]), released[1]) if released is not None else None
        for guess in _attempts(known):
            current = guess if guess is not None else await self._read_record(lockspace, key)
            record = current.value if current else None
            if record is not None and any(h != me for h in record.holders):
                await self._observe(space)  # judge the holders on a fresh read, not the last renew's
            decision = decide_acquire(record, key, me, mode, lambda o: space.tracker.liveness(o, self.clock()))
            if isinstance(decision, Busy):
                self.metrics.acquire_busy += 1
                log.info("busy %s/%s for pid=%d: %s", lockspace, key, process.pid, decision.reason)
                raise LeaseHeld(f"lease {lockspace}/{key} is busy: {decision.reason}; retry in "
                                f"{decision.retry_after_s:.1f} s or after its release", reason=decision.reason,
                                retry_after_s=decision.retry_after_s,
                                holders=tuple(str(h) for h in decision.holders))
            try:
                if isinstance(decision, TakeOver):
                    await self._take_over(space, decision, key)
                if isinstance(decision, Grant) and decision.unchanged:
                    version = current.version if current else 0
                else:
                    version = await self._write_record(lockspace, decision.record,
                                                       current.version if current else None, me)
            except VersionConflict as conflict:
                log.info("acquire %s/%s: %s; deciding again", lockspace, key, conflict)
                continue
            if space.incarnation != me.incarnation:
                # We self-fenced while writing: the record names a dead incarnation; it is released later.
                self._releasing[(lockspace, key)] = me.incarnation
                raise LeaseLost(f"lost lockspace {lockspace} while acquiring {key}: self-fenced, retry")
            self._watch(process)
            lease = HeldLease(lockspace, key, mode, decision.record.token, version, me.incarnation,
                              self._alone(process))
            self._leases[(lockspace, key)] = lease
            self._sync_lease(lockspace, key)
            if self._releasing.pop((lockspace, key), None) is not None:
                self._persist()  # otherwise state.json did not change: the lease has its own file
            log.info("acquired %s/%s mode=%s token=%d pid=%d%s", lockspace, key, mode.value, lease.token,
                     process.pid, " (takeover)" if isinstance(decision, TakeOver) else "")
            return lease
        raise LeaseHeld(f"lease {lockspace}/{key} keeps changing under us; retry", reason="contended",
                        retry_after_s=self.config.timing.renew_interval_s)

    async def _read_record(self, lockspace: str, key: str) -> Versioned[Resource] | None:
        return await self._io(f"read lease {lockspace}/{key}", self.store.read_resource, lockspace, key)

    async def _write_record(self, lockspace: str, record: Resource, expected_version: int | None,
                            me: Owner) -> int:
        try:
            return await self._io(f"write lease {lockspace}/{record.key}", self.store.write_resource, lockspace,
                                  record, expected_version=expected_version)
        except StoreUnavailable:
            # The write may still land after we gave up on it (a thread cannot be cancelled): make sure a
            # record naming us without a local owner is released in the background.
            self._releasing[(lockspace, record.key)] = me.incarnation
            raise

    def _add_local_owner(self, held: HeldLease, process: ProcessRef, mode: Mode) -> HeldLease:
        if process in held.owners and held.mode == mode:
            return held
        if mode == Mode.SHARED and held.mode == Mode.SHARED:
            held.owners += (process,)
            self._watch(process)
            self._sync_lease(held.lockspace, held.key)
            log.info("acquired %s/%s mode=shared token=%d pid=%d (joins local holding)", held.lockspace,
                     held.key, held.token, process.pid)
            return held
        pids = ",".join(str(p.pid) for p in sorted(held.owners))
        reason = f"held {held.mode.value} on this host by pid {pids}"
        self.metrics.acquire_busy += 1
        raise LeaseHeld(f"lease {held.lockspace}/{held.key} is busy: {reason}", reason=reason,
                        retry_after_s=None, holders=(f"{self.config.host}/{held.incarnation}",))

    async def _take_over(self, space: Space, decision: TakeOver, key: str) -> None:
        """Evict every dead victim's heartbeat (CAS on the counter judged dead), then fence it."""
        for victim in decision.victims:
            if victim.owner.host == self.config.host:
                # A previous incarnation of this very host: its owners died in our self-fence (or by the
                # watchdog). Fencing "this host" at the storage would cut off the acquiring VM itself.
                log.info("taking over %s/%s from our own previous incarnation %s", space.name, key,
                         victim.owner.incarnation)
                continue
            beat = space.tracker.heartbeat(victim.owner.host)
            if beat is not None and beat.incarnation == victim.owner.incarnation:
                if beat.evicted_by is None:
                    # VersionConflict here means it renewed after all: the caller decides again.
                    await self._io(f"evict {victim.owner} from {space.name}", self.store.write_heartbeat,
                                   space.name, beat.evicted(space.me), expected=beat)
                    log.info("evicted %s from %s (counter %d unchanged for %.1f s)", victim.owner, space.name,
                             beat.counter, victim.last_change_age_s)
                await self._fence(space.name, beat, keys=[key])
            else:
                await self._fence(space.name, Heartbeat(victim.owner.host, victim.owner.incarnation, -1, 0.0),
                                  keys=[key])
        self.metrics.takeovers += 1

    async def _fence(self, lockspace: str, victim: Heartbeat, *, keys: list[str] | None) -> list[str]:
        """Cut the victim's lockd client and the data path of ``keys`` (None: every lease it holds)."""
        actions = []
        if victim.client and victim.client != self._client_id:
            actions.append(await self._io(f"fence store client of {victim.host}", self.store.fence_client,
                                          lockspace, victim, timeout_s=self.config.fence_timeout_s))
        if keys is None:
            records = await self._io(f"list leases of {lockspace}", self.store.list_resources, lockspace,
                                     timeout_s=self.config.fence_timeout_s)
            keys = [r.value.key for r in records if victim.owner in r.value.holders]
        for key in keys:
            result = await self._io(f"fence {victim.host} on {lockspace}/{key}", self.fencer.fence,
                                    victim.host, LeaseRef(lockspace, key), timeout_s=self.config.fence_timeout_s)
            if not result.done:
                raise FenceFailed(f"fencing {victim.host} off {lockspace}/{key} failed ({result.method}): "
                                  f"{result.detail}")
            actions.append(f"{result.method}: {result.detail}")
        self.metrics.fences += 1
        for action in actions:
            log.info("fence %s in %s: %s", victim.owner, lockspace, action)
        return actions

    async def _drop_lease(self, lease: HeldLease, *, wait: bool = True) -> None:
        """No local owner is left: forget it locally, then release the record now (``wait``) or leave it
        to the release task (an exited owner may have held thousands: nobody waits for those)."""
        if self._leases.get((lease.lockspace, lease.key)) is not lease:
            return  # self-fenced meanwhile: already dropped and queued for release
        del self._leases[(lease.lockspace, lease.key)]
        self._releasing[(lease.lockspace, lease.key)] = lease.incarnation
        self._sync_lease(lease.lockspace, lease.key)  # the caller persists the daemon state once
        self.metrics.releases += 1
        if not wait:
            return
        known = None
        if lease.mode == Mode.EXCLUSIVE:
            # An exclusive record names exactly its one holder: what we wrote is known, at lease.version.
            record = Resource(lease.key, Mode.EXCLUSIVE, (Owner(self.config.host, lease.incarnation),), lease.token)
            known = Versioned(record, lease.version)
        try:
            await self._release_record(lease.lockspace, lease.key, lease.incarnation, known=known)
        except LockdError as error:
            log.warning("release of %s/%s not written yet (%s); retrying in the background", lease.lockspace,
                        lease.key, error)

    async def _release_record(self, lockspace: str, key: str, incarnation: str, *,
                              known: Versioned[Resource] | None = None) -> None:
        """Write the record without us (``known``: the record as we wrote it, so no read first; the write is
        guarded by its version, and a conflict makes us read it)."""
        me = Owner(self.config.host, incarnation)
        for guess in _attempts(known):
            current = guess if guess is not None else await self._read_record(lockspace, key)
            new = decide_release(current.value if current else None, me)
            if new is None or current is None:
                break
            try:
                version = await self._io(f"release {lockspace}/{key}", self.store.write_resource, lockspace, new,
                                         expected_version=current.version)
                log.info("released %s/%s token=%d", lockspace, key, new.token)
                if new.free:
                    self._remember_released(lockspace, key, new.token, version)
                break
            except VersionConflict:
                continue
        else:
            raise VersionConflict(f"release of {lockspace}/{key} kept conflicting")
        if self._releasing.get((lockspace, key)) == incarnation:
            del self._releasing[(lockspace, key)]  # persisted by the caller (once per batch)

    def _remember_released(self, lockspace: str, key: str, token: int, version: int) -> None:
        self._released[(lockspace, key)] = (token, version)
        if len(self._released) > FREE_RECORDS_KEPT:
            del self._released[next(iter(self._released))]  # the oldest

    # ------------------------------------------------------------------------------------- heartbeat

    def _space(self, lockspace: str) -> Space:
        space = self._spaces.get(lockspace)
        if space is None:
            timing = self.config.timing
            space = Space(lockspace, self.config.host, _new_incarnation(), LivenessTracker(timing.ttl_s),
                          RenewalDeadline(timing))
            self._spaces[lockspace] = space
        return space

    async def _ensure_joined(self, space: Space) -> Space:
        """Write our first heartbeat in the lockspace (replacing our host's previous incarnation's)."""
        if space.heartbeat is not None:
            return space
        async with space.join_lock:
            if space.heartbeat is None:
                await self._join(space)
        return space

    async def _join(self, space: Space) -> None:
        beats = await self._observe(space)
        previous = beats.get(self.config.host)
        if previous is not None and previous.incarnation == space.incarnation:
            space.heartbeat = previous  # re-adopted and already in the store: the next renewal continues it
            return
        self._client_id = await self._io("client id", self.store.client_id)  # new after a fence
        first = Heartbeat(self.config.host, space.incarnation, 0, self.config.timing.ttl_s, client=self._client_id)
        started = self.clock()
        await self._io(f"join {space.name}", self.store.write_heartbeat, space.name, first, expected=previous)
        acked = self.clock()
        space.heartbeat = first
        space.deadline.acknowledged(started, acked)
        space.last_ack_at = acked
        self._persist()
        log.info("joined lockspace %s as %s", space.name, space.me)

    async def _observe(self, space: Space) -> dict[str, Heartbeat]:
        started = self.clock()
        beats = await self._io(f"read heartbeats of {space.name}", self.store.read_heartbeats, space.name)
        space.tracker.observe(beats.values(), read_started=started, read_finished=self.clock())
        return beats

    async def _renew(self, space: Space) -> None:
        if space.heartbeat is None:
            await self._ensure_joined(space)
            return
        incarnation, expected = space.incarnation, space.heartbeat
        self._client_id = self.store.client_id()  # a store that reconnected has a new client to advertise
        new = expected.renewed(client=self._client_id)
        started = self.clock()
        try:
            await self._io(f"renew {space.name}", self.store.write_heartbeat, space.name, new, expected=expected)
        except VersionConflict:
            beats = await self._observe(space)
            mine = beats.get(self.config.host)
            if (mine is not None and mine.incarnation == incarnation and mine.evicted_by is None
                    and mine.counter >= expected.counter and space.incarnation == incarnation):
                # A previous lockd process wrote this after its last persist: it is ours, continue from it.
                space.heartbeat = mine
                return
            if space.incarnation == incarnation:
                who = mine.evicted_by if mine is not None and mine.evicted_by else "another writer"
                self._self_fence(space, f"heartbeat replaced by {who}")
            return
        acked = self.clock()
        if space.incarnation != incarnation:
            return  # we self-fenced meanwhile; the next round re-joins
        latency = acked - started
        space.last_renew_latency_s = latency
        self.metrics.renewals += 1
        self.metrics.renew_latency_sum_s += latency
        self.metrics.renew_latency_max_s = max(self.metrics.renew_latency_max_s, latency)
        if not space.deadline.acknowledged(started, acked):
            self._self_fence(space, f"renewal acknowledged {latency:.3f} s after it started, past the deadline")
            return
        space.heartbeat = new
        space.last_ack_at = acked
        space.renew_failures = 0
        self._persist()
        await self._observe(space)

    async def _renew_loop(self) -> None:
        interval = self.config.timing.renew_interval_s
        while not self._stopping:
            round_started = self.clock()
            await asyncio.gather(*(self._renew_one(s) for s in list(self._spaces.values())))
            self._forget_dead()
            delay = max(0.0, interval - (self.clock() - round_started))
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _renew_one(self, space: Space) -> None:
        try:
            await self._renew(space)
        except Exception as error:  # whatever it is, the deadline decides; the loop must go on
            space.renew_failures += 1
            self.metrics.renew_failures += 1
            remaining = space.deadline.remaining_s(self.clock())
            log.warning("renewal of %s failed (%s); self-fence in %s s unless one succeeds", space.name, error,
                        "?" if remaining is None else f"{remaining:.1f}")

    async def _release_loop(self) -> None:
        """Retry releases the store did not take yet. Its own task: it waits for the acquire/release mutex,
        which renewals must never do."""
        while not self._stopping:
            await asyncio.sleep(self.config.timing.renew_interval_s / 4)
            if self._releasing:
                try:
                    await self._retry_releases()
                except Exception:
                    log.exception("release retry failed")

    async def _retry_releases(self) -> None:
        for (lockspace, key), incarnation in list(self._releasing.items()):
            try:
                async with self._mutex:  # an acquire of the same key must not interleave
                    if (lockspace, key) in self._leases or self._releasing.get((lockspace, key)) != incarnation:
                        continue
                    await self._release_record(lockspace, key, incarnation)
            except LockdError as error:
                log.debug("release of %s/%s still pending: %s", lockspace, key, error)
        self._persist()

    def _forget_dead(self) -> None:
        now = self.clock()
        for space in self._spaces.values():
            space.tracker.forget_dead(now, keep_s=10 * self.config.timing.ttl_s)

    # ------------------------------------------------------------------------------------- self-fence

    async def _watchdog_loop(self) -> None:
        """Kill owners the moment a lockspace's deadline passes, whatever the renew loop is stuck in."""
        while not self._stopping:
            await asyncio.sleep(max(0.001, self.check_deadlines()))

    def check_deadlines(self) -> float:
        """Self-fence every lockspace whose deadline has passed; returns seconds until the next check."""
        now = self.clock()
        next_check = 0.1
        for space in list(self._spaces.values()):
            if space.deadline.expired(now):
                self._self_fence(space, "no renewal acknowledged within TTL - margin")
            else:
                remaining = space.deadline.remaining_s(now)
                if remaining is not None:
                    next_check = min(next_check, remaining)
        return next_check

    def _self_fence(self, space: Space, why: str) -> None:
        """SIGKILL every owner of this lockspace's leases, forget them and re-join with a new incarnation."""
        victims = [le for le in self._leases.values() if le.lockspace == space.name]
        killed = set()
        for lease in victims:
            for process in lease.owners:
                handle = self._handles.get(process)
                if handle is not None:
                    handle.kill()
                    killed.add(process.pid)
            del self._leases[(lease.lockspace, lease.key)]
            self._releasing[(lease.lockspace, lease.key)] = lease.incarnation
            self._sync_lease(lease.lockspace, lease.key)
        if victims or space.heartbeat is not None:
            log.error("self-fence of %s in %s (%s): killed pids %s, dropped %d lease(s)", space.me, space.name, why,
                      sorted(killed) or "none", len(victims))
        self.metrics.self_fences += 1 if victims else 0
        self.metrics.owners_killed += len(killed)
        space.incarnation = _new_incarnation()
        space.heartbeat = None
        space.deadline.reset()
        self._forget_unused_handles()
        self._persist()
        self._wake.set()
        self._wake = asyncio.Event()

    def _require_healthy(self, space: Space) -> None:
        remaining = space.deadline.remaining_s(self.clock())
        # Less than one renew interval before the self-fence: renewals are failing and the owner would be
        # killed right after the grant.
        if remaining is None or remaining < self.config.timing.renew_interval_s:
            raise StoreUnavailable(f"lockspace {space.name}: renewals are failing (self-fence in "
                                   f"{remaining if remaining is not None else 0:.1f} s); not granting leases")

    # ------------------------------------------------------------------------------------- owners

    def _watch(self, process: ProcessRef) -> None:
        if process in self._handles:
            return
        try:
            handle = ProcessHandle(process)
        except (ProcessLookupError, OSError):
            self._exited.append(process)
            if self._tg is not None:
                self._background(self.release_owner(process))
                self._exited.remove(process)
            return
        self._handles[process] = handle
        if self._tg is not None:
            self._watch_fd(handle)

    def _alone(self, process: ProcessRef) -> tuple[ProcessRef, ...]:
        """``(process,)``, shared by every lease the process holds alone (most leases: one tuple per owner)."""
        handle = self._handles.get(process)
        return handle.alone if handle is not None else (process,)

    def _watch_fd(self, handle: ProcessHandle) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(handle.fd, self._owner_exited, handle.process)

    def _owner_exited(self, process: ProcessRef) -> None:
        handle = self._handles.get(process)
        if handle is not None:
            asyncio.get_running_loop().remove_reader(handle.fd)
        if self._tg is not None:
            self._background(self.release_owner(process))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the task group; a failure is logged, never fatal to the daemon."""
        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("background task failed")

        assert self._tg is not None
        self._tg.create_task(guarded())

    def _forget_unused_handles(self) -> None:
        in_use = {p for le in self._leases.values() for p in le.owners}
        for process in list(self._handles):
            if process not in in_use:
                handle = self._handles.pop(process)
                try:
                    asyncio.get_running_loop().remove_reader(handle.fd)
                except RuntimeError:
                    pass
                handle.close()

    # ------------------------------------------------------------------------------------- persistence

    def _persist(self) -> None:
        """Write the daemon's small state (spaces, renewals, pending releases); leases have their own files
        (``_sync_lease``), so a renewal costs the same with 1 or 10,000 leases."""
        state = {
            "version": STATE_VERSION, "host": self.config.host, "boot_id": boot_id(),
            "daemon": self._me.to_json(), "self_fence_after_s": self.config.timing.self_fence_after_s,
            "spaces": {
                name: {"incarnation": s.incarnation, "heartbeat": s.heartbeat.encode() if s.heartbeat else None,
                       "last_acked_start": s.deadline.last_acked_start}
                for name, s in self._spaces.items()
            },
            "releasing": [[ls, key, inc] for (ls, key), inc in self._releasing.items()],
        }
        write_state(self.config.state_dir / STATE_FILE, state)

    def _sync_lease(self, lockspace: str, key: str) -> None:
        """Make ``leases/<hash>.json`` match this host's holding of one lease (absent: file removed)."""
        path = lease_state_path(self.config.state_dir, lockspace, key)
        lease = self._leases.get((lockspace, key))
        if lease is None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("cannot remove %s: %s", path, exc)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_state(path, lease.to_json())

    def _lock_state_dir(self) -> None:
        """One lockd per state directory: two would renew the same heartbeats and kill each other's owners.
        The flock lives as long as this process (a kill -9 frees it for the restart)."""
        fd = os.open(self.config.state_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"another lockd is running with state directory {self.config.state_dir}; "
                              "stop it first or give this one its own state_dir") from None
        self._state_lock_fd = fd

    def _readopt(self) -> None:
        path = self.config.state_dir / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable state %s: %s", path, exc)
            return
        if state.get("version") != STATE_VERSION or state.get("host") != self.config.host:
            log.error("ignoring state %s of another host or version", path)
            return
        same_boot = state.get("boot_id") == boot_id()
        now = self.clock()
        for name, data in state.get("spaces", {}).items():
            space = self._space(name)
            space.incarnation = data["incarnation"]
            last = data.get("last_acked_start")
            if same_boot and data.get("heartbeat") and last is not None:
                space.heartbeat = Heartbeat.decode(data["heartbeat"])
                space.deadline.acknowledged(last, last)
        for data in read_lease_states(self.config.state_dir):
            lease = HeldLease.from_json(data)
            lease.owners = tuple(p for p in lease.owners if p.alive())
            self._leases[(lease.lockspace, lease.key)] = lease
        for lockspace, key, incarnation in state.get("releasing", []):
            self._releasing[(lockspace, key)] = incarnation
        for lease in list(self._leases.values()):
            if not lease.owners:
                del self._leases[(lease.lockspace, lease.key)]
                self._releasing[(lease.lockspace, lease.key)] = lease.incarnation
                self._sync_lease(lease.lockspace, lease.key)
            for process in lease.owners:
                self._watch(process)
        self._persist()
        for space in list(self._spaces.values()):
            if space.deadline.expired(now) or space.heartbeat is None:
                # Back too late (or after a reboot): our leases may have been taken over. Kill first.
                self._self_fence(space, "restarted after the self-fence deadline")
        log.info("re-adopted %d lease(s) in %d lockspace(s) from %s", len(self._leases), len(self._spaces), path)

    # ------------------------------------------------------------------------------------- store I/O

    async def _io(self, what: str, fn: Callable[..., T], *args: Any, timeout_s: float | None = None,
                  **kwargs: Any) -> T:
        timeout = timeout_s if timeout_s is not None else self.config.io_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(fn, *args, **kwargs)
        except TimeoutError:
            raise StoreUnavailable(f"{what}: no answer from {self.store.describe} within {timeout} s") from None
        except LeaseLost as lost:
            # Our store client itself was fenced: every lockspace shares it, so every lease is gone.
            for space in list(self._spaces.values()):
                self._self_fence(space, str(lost))
            raise


def _new_incarnation() -> str:
    return os.urandom(6).hex()  # what secrets.token_hex does, without that module's imports in the daemon


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
