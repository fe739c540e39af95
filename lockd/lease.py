"""The pure lease state machine: records, fencing tokens, liveness arithmetic and the self-fence deadline.

Nothing here does I/O, sleeps or reads a clock: every time is a float of the *observer's own* monotonic clock,
passed in by the caller. ``lockd.manager`` carries out the decisions taken here.

Records (all live in the lease store, changed only by compare-and-swap):

* ``Heartbeat`` - one per host and lockspace: host id, incarnation (random per join), a counter bumped every
  renew interval, the TTL the host promises to self-fence within, and ``evicted_by`` once a taker has cut it off.
* ``Resource`` - one per lease: mode (exclusive/shared), the holders (host + incarnation) and a fencing
  ``token`` that grows on every change of holders.

Liveness without synchronized clocks (``LivenessTracker``): an observer remembers, on its own clock, when it
first saw each (host, incarnation)'s current counter; the holder is dead once a read that *started* a full TTL
after that moment still shows the same counter. The holder began the renewal that wrote that counter before the
observer saw it, and it kills its owners by that start + TTL - margin (``RenewalDeadline``), so by then they
are gone. A host never observed is dead only once the observer itself has watched for a TTL. An evicted
heartbeat (a taker CAS'd ``evicted_by`` over the exact counter it judged dead) can never be renewed again, which
closes the race with a renewal in flight.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from lockd.errors import InvalidRequest, ProtocolError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
MAX_KEY_LENGTH = 1024


def validate_host_id(host: str) -> str:
    if not _NAME_RE.match(host):
        raise InvalidRequest(f"invalid host id {host!r}: use 1-128 of A-Z a-z 0-9 . _ : @ + - (not first)")
    return host


def validate_lockspace(lockspace: str) -> str:
    if not _NAME_RE.match(lockspace):
        raise InvalidRequest(
            f"invalid lockspace {lockspace!r}: use 1-128 of A-Z a-z 0-9 . _ : @ + - (not first)")
    return lockspace


def validate_key(key: str) -> str:
    """Keys are volume names or virtlockd resource names: any printable text without NUL, bounded length."""
    if not key or len(key) > MAX_KEY_LENGTH or "\x00" in key or not key.isprintable():
        raise InvalidRequest(f"invalid lease key {key!r}: 1-{MAX_KEY_LENGTH} printable characters")
    return key


class Mode(enum.StrEnum):
    EXCLUSIVE = "exclusive"
    SHARED = "shared"


@dataclass(frozen=True, order=True)
class Owner:
    """A holder in the store: one lockd incarnation on one host (not a process; those are local)."""

    host: str
    incarnation: str

    def __str__(self) -> str:
        return f"{self.host}/{self.incarnation}"

    @classmethod
    def parse(cls, text: str) -> Owner:
        host, sep, incarnation = text.partition("/")
        if not sep or not host or not incarnation:
            raise ProtocolError(f"malformed owner {text!r} (want HOST/INCARNATION)")
        return cls(host, incarnation)


@dataclass(frozen=True)
class Heartbeat:
    """One host's liveness record in one lockspace. ``client`` names the host's store client (a RADOS
    address) so a taker can cut that client off too; empty where the store has no such notion."""

    host: str
    incarnation: str
    counter: int
    ttl_s: float
    evicted_by: str | None = None
    client: str = ""

    @property
    def owner(self) -> Owner:
        return Owner(self.host, self.incarnation)

    def renewed(self, client: str | None = None) -> Heartbeat:
        """The next heartbeat; ``client`` replaces the advertised store client (a restarted lockd that
        re-adopted this incarnation has a new one, and a taker must cut off that one)."""
        return replace(self, counter=self.counter + 1, client=self.client if client is None else client)

    def evicted(self, by: Owner) -> Heartbeat:
        return replace(self, evicted_by=str(by))

    def encode(self) -> str:
        """Canonical text (sorted keys, no spaces): stores compare these bytes in compare-and-swap."""
        data: dict[str, Any] = {"host": self.host, "incarnation": self.incarnation, "counter": self.counter,
                                "ttl_s": self.ttl_s}
        if self.evicted_by is not None:
            data["evicted_by"] = self.evicted_by
        if self.client:
            data["client"] = self.client
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes) -> Heartbeat:
        try:
            data = json.loads(text)
            return cls(host=str(data["host"]), incarnation=str(data["incarnation"]),
                       counter=int(data["counter"]), ttl_s=float(data["ttl_s"]),
                       evicted_by=data.get("evicted_by"), client=str(data.get("client", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed heartbeat record: {exc}") from None


@dataclass(frozen=True)
class Resource:
    """The ownership record of one lease. Free when ``holders`` is empty; the token never goes down."""

    key: str
    mode: Mode = Mode.EXCLUSIVE
    holders: tuple[Owner, ...] = ()
    token: int = 0

    @property
    def free(self) -> bool:
        return not self.holders

    def with_holders(self, holders: Iterable[Owner], mode: Mode | None = None) -> Resource:
        """The next record: new holders (sorted, unique) and token + 1."""
        return Resource(self.key, mode or self.mode, tuple(sorted(set(holders))), self.token + 1)

    def without(self, owner: Owner) -> Resource:
        return self.with_holders(h for h in self.holders if h != owner)

    def encode(self) -> str:
        return json.dumps({"key": self.key, "mode": self.mode.value, "holders": [str(h) for h in self.holders],
                           "token": self.token}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes) -> Resource:
        try:
            data = json.loads(text)
            return cls(key=str(data["key"]), mode=Mode(data["mode"]),
                       holders=tuple(Owner.parse(h) for h in data["holders"]), token=int(data["token"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed resource record: {exc}") from None


T = TypeVar("T")


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """A record as read from the store with the store's version of it (the compare-and-swap handle)."""

    value: T
    version: int


@dataclass(frozen=True)
class LeaseTiming:
    """The timing contract of one lockd: renew every ``renew_interval_s``; kill owners if no renewal has been
    acknowledged whose start is later than now - (``ttl_s`` - ``margin_s``). The margin covers clock-rate
    drift between hosts and the time a SIGKILL takes."""

    ttl_s: float = 8.0
    renew_interval_s: float = 1.0
    margin_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.margin_s < self.ttl_s:
            raise InvalidRequest(f"margin_s {self.margin_s} must be > 0 and below ttl_s {self.ttl_s}")
        if not 0 < self.renew_interval_s <= (self.ttl_s - self.margin_s) / 2:
            raise InvalidRequest(
                f"renew_interval_s {self.renew_interval_s} must be > 0 and at most (ttl_s - margin_s) / 2 "
                f"= {(self.ttl_s - self.margin_s) / 2} so one failed renewal is survivable")

    @property
    def self_fence_after_s(self) -> float:
        return self.ttl_s - self.margin_s


# ---------------------------------------------------------------------------------------------- liveness

class HostState(enum.StrEnum):
    ALIVE = "alive"              # its counter changed less than a TTL of observation ago
    UNCONFIRMED = "unconfirmed"  # not renewing as far as we saw, but not yet watched for a full TTL
    DEAD = "dead"                # counter unchanged through a full TTL of our observation
    EVICTED = "evicted"          # a taker has CAS'd it out; it can never renew again


@dataclass(frozen=True)
class Liveness:
    """What one observer can say about one (host, incarnation) at one moment.

    ``last_change_age_s``: time since we first saw its current counter (or since we started watching).
    ``dead_in_s``: how long until it can be declared dead if its counter does not change (0 when dead).
    """

    owner: Owner
    state: HostState
    counter: int | None
    last_change_age_s: float
    dead_in_s: float
    current: bool  # this incarnation is the host's current heartbeat

    @property
    def dead(self) -> bool:
        return self.state in (HostState.DEAD, HostState.EVICTED)

    def to_json(self) -> dict[str, Any]:
        return {"host": self.owner.host, "incarnation": self.owner.incarnation, "state": self.state.value,
                "counter": self.counter, "last_change_age_s": round(self.last_change_age_s, 3),
                "dead_in_s": round(self.dead_in_s, 3), "current": self.current}


@dataclass
class _Seen:
    counter: int
    changed_at: float
    ttl_s: float
    evicted: bool
    renewing: bool  # we saw this counter change at least once, so it was renewing under our eyes


@dataclass
class LivenessTracker:
    """Per-lockspace memory of every heartbeat this observer has read, on the observer's monotonic clock.

    Call ``observe`` after every read of all heartbeats, with the time the read started and finished. A
    counter change is dated at the read's *finish* (the latest it can have happened for us), and "still
    unchanged" is dated at the read's *start* (the earliest moment the read may reflect), so both errors
    make a death later, never earlier.
    """

    ttl_s: float
    _watching_since: float | None = None
    _last_read_started: float | None = None
    _seen: dict[Owner, _Seen] = field(default_factory=dict)
    _current: dict[str, Heartbeat] = field(default_factory=dict)

    def observe(self, heartbeats: Iterable[Heartbeat], *, read_started: float, read_finished: float) -> None:
        if read_finished < read_started:
            raise ValueError("a read cannot finish before it starts")
        if self._watching_since is None:
            self._watching_since = read_finished
        if self._last_read_started is None or read_started > self._last_read_started:
            self._last_read_started = read_started
        current: dict[str, Heartbeat] = {}
        for hb in heartbeats:
            current[hb.host] = hb
            seen = self._seen.get(hb.owner)
            evicted = hb.evicted_by is not None
            if seen is None or seen.counter != hb.counter or seen.evicted != evicted:
                renewing = seen is not None and hb.counter > seen.counter
                self._seen[hb.owner] = _Seen(hb.counter, read_finished, max(self.ttl_s, hb.ttl_s), evicted,
                                             renewing)
        self._current = current

    @property
    def watched_s(self) -> float:
        """How long this observer has watched (up to the start of its latest read)."""
        if self._watching_since is None or self._last_read_started is None:
            return 0.0
        return max(0.0, self._last_read_started - self._watching_since)

    def heartbeat(self, host: str) -> Heartbeat | None:
        """The host's heartbeat as of the latest read."""
        return self._current.get(host)

    def liveness(self, owner: Owner, now: float) -> Liveness:
        """Liveness of one holder. ``now`` only shapes ``last_change_age_s``/``dead_in_s``; the verdict
        depends on reads alone."""
        seen = self._seen.get(owner)
        current_hb = self._current.get(owner.host)
        is_current = current_hb is not None and current_hb.incarnation == owner.incarnation
        if seen is None:
            since = self._watching_since if self._watching_since is not None else now
            counter, ttl_s = None, self.ttl_s
        else:
            if seen.evicted:
                return Liveness(owner, HostState.EVICTED, seen.counter, max(0.0, now - seen.changed_at), 0.0,
                                is_current)
            since, counter, ttl_s = seen.changed_at, seen.counter, seen.ttl_s
        confirmed_unchanged_s = (self._last_read_started - since) if self._last_read_started is not None else 0.0
        age_s = max(0.0, now - since)
        if self._last_read_started is not None and confirmed_unchanged_s >= ttl_s:
            return Liveness(owner, HostState.DEAD, counter, age_s, 0.0, is_current)
        dead_in_s = max(0.0, since + ttl_s - now)
        if seen is not None and seen.renewing and is_current and age_s < ttl_s / 2:
            state = HostState.ALIVE
        else:
            # Never seen renewing, or silent for a while: we cannot vouch for it (but it is not dead).
            state = HostState.UNCONFIRMED
        return Liveness(owner, state, counter, age_s, dead_in_s, is_current)

    def hosts(self, now: float) -> list[Liveness]:
        """Liveness of every host's current incarnation, by host id."""
        return [self.liveness(hb.owner, now) for _, hb in sorted(self._current.items())]

    def forget_dead(self, now: float, *, keep_s: float) -> None:
        """Drop memory of non-current incarnations dead for longer than ``keep_s`` (bounded memory).
        Forgetting is safe: an unknown owner is judged from ``_watching_since``, which is even older."""
        for owner in list(self._seen):
            seen = self._seen[owner]
            current = self._current.get(owner.host)
            if current is not None and current.incarnation == owner.incarnation:
                continue
            if now - seen.changed_at > keep_s and self.liveness(owner, now).dead:
                del self._seen[owner]


# ---------------------------------------------------------------------------------------------- acquire

@dataclass(frozen=True)
class Grant:
    """Write ``record`` (CAS against the version read); ``unchanged`` when we already hold it that way."""

    record: Resource
    unchanged: bool = False


@dataclass(frozen=True)
class Busy:
    """Cannot be granted now. ``retry_after_s`` None: only a release by a live holder frees it."""

    reason: str
    retry_after_s: float | None
    holders: tuple[Owner, ...]


@dataclass(frozen=True)
class TakeOver:
    """Every conflicting holder is confirmed dead: evict and fence each victim, then CAS in ``record``."""

    victims: tuple[Liveness, ...]
    record: Resource


Decision = Grant | Busy | TakeOver


def decide_acquire(current: Resource | None, key: str, me: Owner, mode: Mode,
                   liveness: Callable[[Owner], Liveness]) -> Decision:
    """What ACQUIRE of ``key`` in ``mode`` by ``me`` should do, given the record as read (None: absent).

    Never waits: a conflicting live holder gives Busy at once with when a retry could succeed.
    """
    record = current if current is not None else Resource(key)
    if me in record.holders and record.mode == mode:
        return Grant(record, unchanged=True)
    others = tuple(h for h in record.holders if h != me)
    if not others:
        return Grant(record.with_holders((me,), mode))
    if mode == Mode.SHARED and record.mode == Mode.SHARED:
        return Grant(record.with_holders((*record.holders, me), mode))
    states = tuple(liveness(h) for h in others)
    blocking = [s for s in states if not s.dead]
    if not blocking:
        return TakeOver(states, record.with_holders((me,), mode))
    words = []
    for s in blocking:
        if s.state == HostState.ALIVE:
            words.append(f"{s.owner.host} (alive, renewed {s.last_change_age_s:.1f} s ago)")
        else:
            words.append(f"{s.owner.host} (not renewing for {s.last_change_age_s:.1f} s; dead in "
                         f"{s.dead_in_s:.1f} s unless it renews)")
    reason = f"held {record.mode.value} by " + ", ".join(words)
    # A live holder frees it by releasing (any time); failing that, all of them are dead at the earliest
    # after the longest of their remaining TTLs.
    retry_after = max(s.dead_in_s for s in blocking)
    return Busy(reason, round(retry_after, 3), tuple(s.owner for s in blocking))


def decide_release(current: Resource | None, me: Owner) -> Resource | None:
    """The record to write when ``me`` lets go; None when there is nothing to write (not ours)."""
    if current is None or me not in current.holders:
        return None
    return current.without(me)


# ---------------------------------------------------------------------------------------------- self-fence

@dataclass
class RenewalDeadline:
    """When this host must have killed its owners: the *start* of the last acknowledged renewal + TTL -
    margin. A renewal acknowledged after the deadline passed does not move it: once expired, the caller
    fences and re-joins with a new incarnation (``reset``)."""

    timing: LeaseTiming
    _last_acked_start: float | None = None
    _expired: bool = False

    @property
    def deadline(self) -> float | None:
        if self._last_acked_start is None:
            return None
        return self._last_acked_start + self.timing.self_fence_after_s

    @property
    def last_acked_start(self) -> float | None:
        return self._last_acked_start

    def acknowledged(self, started_at: float, acked_at: float) -> bool:
        """Record that a renewal started at ``started_at`` was acknowledged at ``acked_at``.

        Returns False (and changes nothing) when the ack came too late: the deadline had already passed.
        """
        if acked_at < started_at:
            raise ValueError("a renewal cannot be acknowledged before it starts")
        if self.expired(acked_at):
            return False
        if self._last_acked_start is None or started_at > self._last_acked_start:
            self._last_acked_start = started_at
        return True

    def expired(self, now: float) -> bool:
        """True from the deadline on (and for ever after, until ``reset``)."""
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            self._expired = True
        return self._expired

    def remaining_s(self, now: float) -> float | None:
        deadline = self.deadline
        if deadline is None:
            return None
        return 0.0 if self._expired else max(0.0, deadline - now)

    def reset(self) -> None:
        self._last_acked_start = None
        self._expired = False
