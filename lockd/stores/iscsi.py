"""Lease store on a small dedicated iSCSI LUN, every change made under a SCSI-3 persistent reservation.

System and tools: any SPC-3 target with persistent reservations (here tgt 1.0.85 through
``hvstore.protocols.libiscsi``, userspace, no kernel initiator). tgt has no COMPARE AND WRITE, so the
compare-and-swap of every record is a read-modify-write inside a mutex made of the LUN's reservation:

* The LUN always carries one reservation of type Write Exclusive: only its holder may write, everyone may
  read. It is never released (a release would let a preempted host's late write land); a holder marks
  its section over by re-registering with a key whose low bit is set ("free"), which keeps the
  reservation.
* Take it: REGISTER AND IGNORE EXISTING KEY with a fresh "busy" key, READ RESERVATION, then RESERVE if
  nobody holds it, or PREEMPT the holder if its key is free, or if the same busy key has been seen for
  ``lock_timeout_s`` (a section that stalled: a frozen or dead host). PREEMPT is an atomic test-and-set on
  the target (300/300 rounds one winner here; a second preempt of the same victim is refused) and removes
  the victim's registration, so a stalled holder's next WRITE fails with RESERVATION CONFLICT: it can
  never land a stale write (verified on tgt, also after the new holder's section is over).
* Inside: locate the record's slot, read it, check the expected version/text, write the new slot with one
  WRITE(16) with FUA (one command: the target checks the reservation once for the whole slot).

Layout: the LUN is an array of ``slot_bytes`` slots. Slot 0 is a superblock (magic, slot size). Every other
slot is empty (zeros) or ``magic | crc32 | length | JSON``; the JSON names what it holds (a lockspace's
heartbeats, all hosts in one slot so one READ sees every host; or one lease record) and its version. A
record lives at the first slot of its name's hash probe sequence that holds it or is empty; slots are never
freed, so probe chains never break. Readers take no lock: a slot read while being rewritten fails its CRC
and is read again.

Limits: PR state lives in tgtd's memory: a tgtd restart forgets the reservation and every registration,
so a host preempted before the restart could write once more after it (restart tgtd only with every lockd
stopped). ``lockspaces`` and ``list_resources`` scan the whole LUN (status only, never on the renewal path).
One slot holds at most ``slot_bytes`` of JSON: about 50 hosts per lockspace with the default 8 KiB.
Fencing: none of the dead host's lockd (``fence_client`` does nothing: its stalled critical sections are
preempted anyway); its VMs are cut off by the volume backend's ``fence`` (iSCSI: ACL removal).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from hvstore.errors import BackendUnavailable
from hvstore.protocols.libiscsi import (
    Chap,
    IscsiConnectionLost,
    IscsiError,
    IscsiSession,
    PrType,
    ReservationConflict,
    Target,
)
from lockd.errors import ProtocolError, StoreUnavailable, VersionConflict
from lockd.lease import Heartbeat, Resource, Versioned, validate_lockspace
from lockd.stores.base import LeaseStore

SUPER_MAGIC = b"LOCKDPR1"
SLOT_MAGIC = b"LKS1"
SLOT_HEADER = struct.Struct(">4sII")  # magic, crc32 of the JSON, JSON length
MAX_PROBES = 64
PROBE_BATCH = 4  # slots read per READ while probing: almost every record is in the first
TORN_READ_RETRIES = 20
RESERVATION = PrType.WRITE_EXCLUSIVE
FREE_BIT = 1  # in a registered key: its holder is between critical sections
SCAN_BYTES = 1 << 20


@dataclass(frozen=True)
class IscsiStoreConfig:
    portal: str
    target: str  # the IQN of the target holding the lease LUN
    initiator: str  # this host's initiator IQN (must be in the target's ACL)
    lun: int = 1
    chap_user: str = ""
    chap_password: str = ""
    slot_bytes: int = 8192
    lock_timeout_s: float = 2.0
    timeout_s: int = 5


class IscsiLeaseStore(LeaseStore):
    kind: ClassVar[str] = "iscsi"

    def __init__(self, config: IscsiStoreConfig) -> None:
        if config.slot_bytes % 512 or config.slot_bytes < 1024:
            raise ValueError(f"slot_bytes {config.slot_bytes}: a multiple of 512, at least 1024")
        self.config = config
        self._session: IscsiSession | None = None
        self._slots = 0
        self._blocks_per_slot = 0
        self._lock = threading.Lock()  # one libiscsi context: one command at a time

    @property
    def describe(self) -> str:
        return f"iscsi:{self.config.portal}/{self.config.target}/{self.config.lun}"

    def connect(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            self._login()
            if self._slots < 2:
                self._close()
                raise StoreUnavailable(f"{self.describe}: the LUN is too small for "
                                       f"{self.config.slot_bytes}-byte slots")
        try:
            self._format_once()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._close()

    def lockspaces(self) -> list[str]:
        return sorted({doc["lockspace"] for doc in self._scan()})

    def read_heartbeats(self, lockspace: str) -> dict[str, Heartbeat]:
        found = self._find(self._name("hb", lockspace))
        if found is None:
            return {}
        return {host: Heartbeat.decode(text) for host, text in found[1]["data"].items()}

    def write_heartbeat(self, lockspace: str, heartbeat: Heartbeat, *, expected: Heartbeat | None) -> None:
        name = self._name("hb", lockspace)
        with self._exclusive():
            slot, doc = self._locate(name)
            hosts = dict(doc["data"]) if doc else {}
            wanted = expected.encode() if expected is not None else None
            if hosts.get(heartbeat.host) != wanted:
                raise VersionConflict(f"heartbeat of {heartbeat.host} in {lockspace} changed under us")
            hosts[heartbeat.host] = heartbeat.encode()
            self._write(slot, {**name, "version": (doc["version"] if doc else 0) + 1, "data": hosts})

    def read_resource(self, lockspace: str, key: str) -> Versioned[Resource] | None:
        found = self._find(self._name("res", lockspace, key))
        if found is None:
            return None
        return Versioned(Resource.decode(found[1]["data"]), int(found[1]["version"]))

    def write_resource(self, lockspace: str, record: Resource, *, expected_version: int | None) -> int:
        name = self._name("res", lockspace, record.key)
        with self._exclusive():
            slot, doc = self._locate(name)
            current = int(doc["version"]) if doc else None
            if current != expected_version:
                raise VersionConflict(f"lease {lockspace}/{record.key} changed under us "
                                      f"(version {current}, expected {expected_version})")
            new_version = (current or 0) + 1
            self._write(slot, {**name, "version": new_version, "data": record.encode()})
            return new_version

    def list_resources(self, lockspace: str) -> list[Versioned[Resource]]:
        validate_lockspace(lockspace)
        records = [Versioned(Resource.decode(d["data"]), int(d["version"])) for d in self._scan()
                   if d["kind"] == "res" and d["lockspace"] == lockspace]
        return sorted(records, key=lambda v: v.value.key)

    # -- the reservation mutex ----------------------------------------------------------------------
    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the LUN's reservation with a busy key for one critical section (see the module docstring).
        StoreUnavailable if it cannot be had within twice the lock timeout, or if we lose it (preempted)
        before our write."""
        with self._lock:
            session = self._live_session()
            busy = _key(free=False)
            started = time.monotonic()
            seen: tuple[int, float] | None = None  # (busy holder key, when first seen)
            with self._errors("reserve"):
                while True:
                    # Again on every round: a preemption may have dropped our registration meanwhile.
                    session.pr_register(busy, ignore_existing=True)
                    holder = session.pr_read_reservation().key
                    now = time.monotonic()
                    if holder == busy:
                        break  # we still held it from our last section; re-keying kept the reservation
                    try:
                        if holder is None:
                            session.pr_reserve(busy, RESERVATION)
                            break
                        if holder & FREE_BIT:
                            session.pr_preempt(busy, holder, RESERVATION)
                            break
                        if seen is None or seen[0] != holder:
                            seen = (holder, now)
                        elif now - seen[1] > self.config.lock_timeout_s:
                            session.pr_preempt(busy, holder, RESERVATION)  # a stalled section
                            break
                    except ReservationConflict:
                        seen = None  # someone else was faster: look again
                    if now - started > 2 * self.config.lock_timeout_s + 1:
                        raise StoreUnavailable(f"{self.describe}: could not reserve the lease LUN within "
                                               f"{now - started:.1f} s")
                    time.sleep(0.001)
            try:
                yield
            finally:
                try:
                    # Keep the reservation (only its holder may write, so nobody else's late write can land)
                    # but say the section is over: the next host preempts at once.
                    session.pr_register(_key(free=True), ignore_existing=True)
                except (IscsiError, BackendUnavailable):
                    pass  # the connection is gone; others preempt the busy key after the lock timeout

    # -- slots ----------------------------------------------------------------------------------------
    @staticmethod
    def _name(kind: str, lockspace: str, key: str | None = None) -> dict[str, Any]:
        name: dict[str, Any] = {"kind": kind, "lockspace": validate_lockspace(lockspace)}
        if key is not None:
            name["key"] = key
        return name

    def _probe_start(self, name: dict[str, Any]) -> int:
        digest = hashlib.sha256(json.dumps(name, sort_keys=True).encode()).digest()
        return 1 + int.from_bytes(digest[:8], "big") % (self._slots - 1)

    def _find(self, name: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """The slot holding ``name`` and its document, reading without the reservation."""
        with self._lock:
            slot, doc = self._locate(name)
        return (slot, doc) if doc is not None else None

    def _locate(self, name: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        """(slot, document) of ``name``, or (first empty slot of its chain, None). Caller holds _lock."""
        start = self._probe_start(name)
        probes = min(MAX_PROBES, self._slots - 1)
        for batch_start in range(0, probes, PROBE_BATCH):
            slots = [1 + (start - 1 + i) % (self._slots - 1) for i in range(batch_start,
                                                                          min(batch_start + PROBE_BATCH, probes))]
            for slot, doc in zip(slots, self._read_slots(slots), strict=True):
                if doc is None:
                    return slot, None
                if all(doc.get(k) == v for k, v in name.items()) and doc.get("key") == name.get("key"):
                    return slot, doc
        raise StoreUnavailable(f"{self.describe}: no free slot within {probes} probes (the LUN is full)")

    def _read_slots(self, slots: list[int]) -> list[dict[str, Any] | None]:
        """Read slots (consecutive ones in one READ), again while one fails its CRC (a concurrent rewrite)."""
        session = self._live_session()
        size = self.config.slot_bytes
        for _ in range(TORN_READ_RETRIES):
            raw = b""
            with self._errors("read"):
                runs: list[tuple[int, int]] = []
                for slot in slots:
                    if runs and runs[-1][0] + runs[-1][1] == slot:
                        runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                    else:
                        runs.append((slot, 1))
                for run_start, count in runs:
                    raw += session.read_blocks(run_start * self._blocks_per_slot, count * self._blocks_per_slot)
            try:
                return [_decode_slot(raw[i * size:(i + 1) * size]) for i in range(len(slots))]
            except _TornSlot:
                time.sleep(0.001)
        raise ProtocolError(f"{self.describe}: slot(s) {slots} keep failing their checksum (corrupt lease LUN?)")

    def _write(self, slot: int, doc: dict[str, Any]) -> None:
        session = self._live_session()
        body = json.dumps(doc, sort_keys=True).encode()
        raw = SLOT_HEADER.pack(SLOT_MAGIC, zlib.crc32(body), len(body)) + body
        if len(raw) > self.config.slot_bytes:
            raise StoreUnavailable(f"{self.describe}: record of {len(raw)} bytes exceeds the {self.config.slot_bytes}"
                                   "-byte slot (too many hosts in one lockspace for this slot size)")
        with self._errors("write"):
            session.write_blocks(slot * self._blocks_per_slot, raw.ljust(self.config.slot_bytes, b"\0"), fua=True)

    def _scan(self) -> Iterator[dict[str, Any]]:
        """Every record on the LUN (whole-LUN read: for status and listing only)."""
        per_read = max(1, SCAN_BYTES // self.config.slot_bytes)
        for first in range(1, self._slots, per_read):
            slots = list(range(first, min(first + per_read, self._slots)))
            with self._lock:
                docs = self._read_slots(slots)
            yield from (d for d in docs if d is not None)

    def _format_once(self) -> None:
        """Write the superblock on a blank LUN; refuse a LUN that holds something else."""
        superblock = SUPER_MAGIC + struct.pack(">I", self.config.slot_bytes)
        with self._lock:
            with self._errors("read"):
                raw = self._live_session().read_blocks(0, self._blocks_per_slot)
        if raw.startswith(superblock):
            return
        if raw.startswith(SUPER_MAGIC):
            raise ProtocolError(f"{self.describe}: formatted with another slot size than {self.config.slot_bytes}")
        if raw.strip(b"\0"):
            raise ProtocolError(f"{self.describe}: the LUN holds something other than lease records")
        with self._exclusive(), self._errors("write"):
            self._live_session().write_blocks(0, superblock.ljust(self.config.slot_bytes, b"\0"), fua=True)

    def _login(self) -> IscsiSession:
        cfg = self.config
        chap = Chap(cfg.chap_user, cfg.chap_password) if cfg.chap_user else None
        session = IscsiSession(Target(cfg.portal, cfg.target, cfg.lun), initiator=cfg.initiator, chap=chap,
                               timeout_s=cfg.timeout_s, reconnect_retries=1)
        try:
            session.login()
        except BackendUnavailable as exc:
            raise StoreUnavailable(str(exc)) from None
        self._session = session
        self._blocks_per_slot = cfg.slot_bytes // session.block_size
        self._slots = session.size_bytes // cfg.slot_bytes
        return session

    def _live_session(self) -> IscsiSession:
        """The session; a new login after a lost connection (the target may admit us again). Holds _lock."""
        if self._session is None:
            if not self._slots:
                raise StoreUnavailable(f"{self.describe}: not connected")
            return self._login()
        return self._session

    def _close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except ReservationConflict:
            raise StoreUnavailable(f"{self.describe}: {what} refused: the reservation was preempted "
                                   "(this host stalled past the lock timeout)") from None
        except IscsiConnectionLost as exc:
            # Log in afresh on the next call (this context's bounded re-logins are spent). The broken
            # context is dropped, not destroyed: iscsi_destroy_context on a context whose re-login failed
            # segfaulted here (libiscsi 1.19), so each outage leaks one small context.
            self._session = None
            raise StoreUnavailable(f"{self.describe}: {what}: {exc}") from None
        except (IscsiError, BackendUnavailable) as exc:
            raise StoreUnavailable(f"{self.describe}: {what}: {exc}") from None


def _key(*, free: bool) -> int:
    """A fresh reservation key (never 0); the low bit says whether its holder is in a critical section."""
    return (secrets.randbits(62) + 1) << 1 | (FREE_BIT if free else 0)


class _TornSlot(Exception):
    pass


def _decode_slot(raw: bytes) -> dict[str, Any] | None:
    if not raw.strip(b"\0"):
        return None
    magic, crc, length = SLOT_HEADER.unpack_from(raw, 0)
    body = raw[SLOT_HEADER.size:SLOT_HEADER.size + length]
    if magic != SLOT_MAGIC or len(body) != length or zlib.crc32(body) != crc:
        raise _TornSlot()
    try:
        doc = json.loads(body)
    except ValueError:
        raise ProtocolError("lease slot with a valid checksum but no JSON") from None
    if not isinstance(doc, dict):
        raise ProtocolError("lease slot is not a record")
    return doc
