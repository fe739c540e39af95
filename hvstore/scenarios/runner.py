"""Runs a parsed scenario (``spec.Scenario``) on one store: real writers, real lockd daemons, real faults.

Hosts are simulated on this machine: a host is its lockd daemon (when the scenario uses leases) plus the
writers started "on" it. Where a writer runs and how it reaches the volume is the store's writer path
(``writers``): ``qemu-io -t none`` on the URI of its host's identity (rbd: cephx user, iscsi: initiator IQN,
granted first), or a dd loop inside the DRBD node the host stands for. A writer writes its byte pattern
over the scenario's region chunk by chunk, each round in a shuffled order of its own, so two concurrent
writers leave a visible mix. Writers start gated: a writer with ``lease`` gets its lease for its own pid
from its host's lockd first and is only then let go; a refused writer is never let go. Faults: ``freeze``
(SIGSTOP the host's lockd and writers: a hung host), ``resume``, ``kill`` (SIGKILL them: a dead host),
``kill-replica`` / ``restore-replica`` (one replica of the store, per backend: ``stores.REPLICA_LOSS``).
``migration-window`` opens or closes the store's dual-primary window (``stores.MIGRATION_WINDOWS``);
``provision`` is in ``provision``.

The lockd daemons of a scenario keep their leases where the store's own leases live (hvstore.toml
``[lease_stores.STORE]``: RADOS for ceph, the ``hvlease`` Gluster volume for gluster, the lease LUN for
iscsi), in a namespace/directory of their own where the store allows; a store without one gets a file
store in a temporary directory. They use the scenario's short timing and fencer: with ``fencer: hvstore``
a takeover first fences the dead host through the store's ``Backend.fence`` (rbd: its cephx client's
watchers blocklisted; iscsi: its initiator dropped from the ACL and its sessions closed), otherwise the
result says no storage fencing was used.
Every process started is killed at the end and the scratch volume deleted. A scenario whose requirement
the store cannot meet reports ``not-applicable`` with the reason, never a figure; a single step the store
cannot do is skipped and listed with its reason (``skipped_steps``, also in ``reason``).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvstore.config import HvstoreConfig, lab_dir
from hvstore.errors import HvstoreError, InvalidArgument
from hvstore.model import Feature, VolumeRef
from hvstore.run import run
from hvstore.scenarios.spec import Scenario, Step, WriterSpec
from hvstore.scenarios.stores import migration_window, replica_loss
from hvstore.scenarios.writers import WriterJob, WriterProcess, writer_path
from hvstore.service import VolumeService
from lockd.owners import spawn_stand_in

Log = Callable[[str], None]
POLL_S = 0.1
TAKEOVER_WRITE_TIMEOUT_S = 60.0
_QEMU_IO_PROGRESS = re.compile(
    r"^(wrote|read) \d+/\d+ bytes|^[0-9.]+ [KMGT]?i?B, \d+ ops;|^Pattern verification failed")


class NotApplicable(Exception):
    """This scenario cannot run on this store; the message says why."""


@dataclass
class Writer:
    spec: WriterSpec
    handle: WriterProcess
    started: float
    let_go: bool = False
    refused: str | None = None  # lockd's answer when the lease was refused
    exit_code: int | None = None
    error: str = ""
    foreign_reads: int = 0  # chunks that read back as not this writer's pattern (verify)


@dataclass
class ScenarioResult:
    scenario: str
    store: str
    backend: str
    status: str = "ok"  # ok | failed | not-applicable | error
    reason: str = ""
    measurements: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    skipped_steps: list[dict[str, str]] = field(default_factory=list)  # {step, reason}
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "store": self.store, "backend": self.backend, "status": self.status,
                "reason": self.reason, "measurements": self.measurements, "checks": self.checks,
                "skipped_steps": self.skipped_steps, "events": self.events, "seconds": round(self.seconds, 2)}


# Where in a store's lease storage scenario leases go, so they never mix with the lab lockd's
# (``HvstoreConfig.lease_store_at`` knows per lease store type which key names that place).
SCENARIO_LEASE_PLACE = "hvstore-scenarios"


def scenario_lease_store(config: HvstoreConfig, store: str, scratch: Path) -> dict[str, Any]:
    """The lockd ``[store]`` table a scenario's hosts share on ``store`` (``{host}`` still in it): the store's
    lease storage moved to ``SCENARIO_LEASE_PLACE``; a type that cannot move (iscsi: one LUN) as configured,
    so the scenario's hosts share the lab's lease LUN; a file store in ``scratch`` when there is none."""
    if store not in config.lease_stores:
        (scratch / "leases").mkdir(exist_ok=True)
        return {"type": "file", "path": str(scratch / "leases")}
    moved = config.lease_store_at(store, SCENARIO_LEASE_PLACE)
    return config.lease_stores[store] if moved is None else moved


def describe_lease_store(table: dict[str, Any]) -> str:
    where = {"file": "a file store in a temporary directory (the store has no lease storage)",
             "rados": f"RADOS pool {table.get('pool')}, namespace {table.get('namespace')}",
             "gluster": f"Gluster volume {table.get('volume')}, directory {table.get('root')}",
             "iscsi": f"the lease LUN {table.get('target')}"}
    return where.get(table["type"], table["type"])


class _Lockd:
    """One scenario host's lockd daemon; the hosts share one lease store."""

    def __init__(self, host: str, root: Path, scenario: Scenario, hvstore_config: Path,
                 lease_store: dict[str, Any]) -> None:
        self.host = host
        self.socket = root / f"{host}.sock"
        config = root / f"{host}.toml"
        t = scenario.lockd
        own = {key: value.replace("{host}", host) if isinstance(value, str) else value  # {host}: per host
               for key, value in lease_store.items()}
        store_lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in own.items())
        config.write_text(
            f'host_id = "{host}"\nttl_s = {t.ttl_s}\nrenew_interval_s = {t.renew_interval_s}\n'
            f'margin_s = {t.margin_s}\nio_timeout_s = {t.io_timeout_s}\nstate_dir = "{root / host}"\n'
            f'admin_socket = "{self.socket}"\nwatchdog = false\nfencer = "{t.fencer}"\n'
            f'hvstore_config = "{hvstore_config}"\n'
            f'[store]\n{store_lines}')
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                           if p)}
        self.log_path = root / f"{host}.log"
        # A daemon for the length of the scenario: not a short-lived tool, so not through hvstore.run.
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "lockd.daemon", "-c", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:]
                raise InvalidArgument(f"lockd for {host} did not start: {' '.join(tail)}")
            time.sleep(0.05)

    def request(self, payload: dict[str, Any]) -> Any:
        from lockd.cli import request

        return request(str(self.socket), payload, timeout_s=10)

    def acquire(self, lockspace: str, key: str, pid: int) -> tuple[bool, str]:
        from lockd.errors import LockdError

        try:
            data = self.request({"op": "acquire", "lockspace": lockspace, "key": key, "pid": pid, "shared": False})
        except LockdError as exc:
            return False, str(exc)
        return True, f"token {data['token']}"

    def release(self, lockspace: str, key: str) -> None:
        self.request({"op": "release", "lockspace": lockspace, "key": key, "pid": None})


class ScenarioRun:
    def __init__(self, service: VolumeService, scenario: Scenario, store: str, log: Log) -> None:
        self.service = service
        self.scenario = scenario
        self.store = store
        self.log = log
        self.backend = service.backend(store)
        self.result = ScenarioResult(scenario.name, store, self.backend.kind)
        self.volume = f"scenario-{scenario.name}-{uuid.uuid4().hex[:6]}"
        self.lease = self.backend.lease(self.volume)
        self.writers: dict[str, Writer] = {}
        self.checked_writers: set[str] = set()
        self.lockds: dict[str, _Lockd] = {}
        self.extra_procs: list[subprocess.Popen[bytes]] = []
        self.last_fault_at: float | None = None
        self.writer_path = writer_path(self.backend, self.volume, scenario.hosts)
        self.replica_loss = replica_loss(self.backend, self.volume, scenario.hosts, lab_dir(), self.event)
        self.replica_lost = False
        self.window = migration_window(self.backend, self.volume, scenario.hosts, lab_dir(), self.event)
        self.skipped: list[dict[str, str]] = []  # steps this store cannot run, and why
        self.started = time.monotonic()

    # -- events -------------------------------------------------------------------------------------
    def event(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:7.2f}s {text}"
        self.result.events.append(line)
        self.log(f"{self.scenario.name}/{self.store}: {text}")

    # -- writers ------------------------------------------------------------------------------------
    def _job(self, spec: WriterSpec, index: int) -> WriterJob:
        """Every round writes every chunk once, in an order of its own (a seeded shuffle per writer and
        round): two writers that overlap at all in time leave chunks of both, wherever they overlap."""
        chunks = self.scenario.region_bytes // self.scenario.chunk_bytes
        shuffle = random.Random(f"{spec.name}-{index}")
        rounds = []
        for _ in range(spec.rounds):
            order = list(range(chunks))
            shuffle.shuffle(order)
            rounds.append(tuple(order))
        return WriterJob(spec.name, spec.host, spec.pattern, self.scenario.chunk_bytes, tuple(rounds), spec.verify)

    def _spawn_writer(self, spec: WriterSpec, index: int) -> Writer:
        """Gated: the writer exists (and its lease owner pid) before it opens the volume."""
        writer = Writer(spec, self.writer_path.start(self._job(spec, index)), time.monotonic())
        self.writers[spec.name] = writer
        return writer

    def start_writers(self, specs: tuple[WriterSpec, ...]) -> list[Writer]:
        started = []
        for spec in specs:
            if spec.name in self.writers:
                raise InvalidArgument(f"writer {spec.name!r} started twice")
            writer = self._spawn_writer(spec, len(self.writers))
            started.append(writer)
            if spec.lease:
                assert writer.handle.lease_pid is not None  # writer_path.reason(lease=True) said so
                granted, detail = self.lockds[spec.host].acquire(self.lease.lockspace, self.lease.key,
                                                                 writer.handle.lease_pid)
                if granted:
                    self.event(f"writer {spec.name} on {spec.host}: lease granted ({detail})")
                else:
                    writer.refused = detail
                    self.event(f"writer {spec.name} on {spec.host}: lease refused: {detail}")
        for writer in started:  # let every admitted writer go at once, so they overlap
            if writer.refused is None:
                writer.handle.let_go()
                writer.let_go = True
            else:
                writer.handle.cancel()
        for writer in started:
            if writer.let_go:
                self.event(f"writer {writer.spec.name} on {self.writer_path.where(writer.spec.host)} writing "
                           f"(pattern {writer.spec.pattern}, {writer.spec.rounds} round(s), {writer.handle.ident})")
        return started

    def wait_writers(self, writers: list[Writer] | None = None, timeout_s: float = 600) -> None:
        for writer in writers or list(self.writers.values()):
            if writer.exit_code is not None:
                continue
            if writer.handle.wait(timeout_s) is None:
                writer.handle.signal(signal.SIGKILL)
                writer.handle.wait(30)
            self._reap(writer)

    def _reap(self, writer: Writer) -> None:
        writer.exit_code = writer.handle.poll()
        lines = writer.handle.output()
        writer.foreign_reads = sum(line.startswith("Pattern verification failed") for line in lines)
        problems = [line for line in lines if not _QEMU_IO_PROGRESS.match(line)]
        if writer.exit_code is not None and writer.exit_code < 0:  # its last line may be cut off mid-way
            problems = [f"killed by signal {-writer.exit_code}",
                        *(line for line in problems if "fail" in line or "rror" in line)]
        writer.error = " / ".join(dict.fromkeys(problems))[-300:]  # distinct messages, in order
        if writer.exit_code and writer.exit_code > 0 and not writer.error and writer.foreign_reads:
            writer.exit_code = 0  # qemu-io exits 1 after a failed verification: it wrote everything
        if writer.let_go:
            outcome = "ok" if writer.exit_code == 0 else f"exit {writer.exit_code}: {writer.error or 'killed'}"
            self.event(f"writer {writer.spec.name} finished: {outcome}")
            self._ack_figures(writer)

    def _ack_figures(self, writer: Writer) -> None:
        """Where the writer path tells how long each acknowledged write took: how many, and the longest
        (an I/O stall, e.g. while a replica disappears)."""
        seconds = writer.handle.write_seconds()
        if seconds:
            self.result.measurements[f"writer_{writer.spec.name}_acked_writes"] = len(seconds)
            self.result.measurements[f"writer_{writer.spec.name}_longest_write_s"] = round(max(seconds), 3)

    def host_writers(self, host: str) -> list[Writer]:
        return [w for w in self.writers.values() if w.spec.host == host and w.exit_code is None]

    # -- steps --------------------------------------------------------------------------------------
    def step(self, step: Step) -> None:
        getattr(self, "_step_" + step.kind.replace("-", "_"))(step)

    def _step_writers(self, step: Step) -> None:
        self.start_writers(step.writers)

    def _step_wait(self, step: Step) -> None:
        if step.args.get("writers"):
            self.wait_writers()
        else:
            time.sleep(step.args["seconds"])

    def _step_fault(self, step: Step) -> None:
        kind, host = step.args["kind"], step.args.get("host")
        if kind in ("freeze", "resume", "kill"):
            sig = {"freeze": signal.SIGSTOP, "resume": signal.SIGCONT, "kill": signal.SIGKILL}[kind]
            hit = []
            for writer in self.host_writers(host):
                writer.handle.signal(sig)
                hit.append(writer.handle.ident)
            if host in self.lockds and self.lockds[host].proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.kill(self.lockds[host].proc.pid, sig)
                hit.append(str(self.lockds[host].proc.pid))
            self.event(f"fault: {kind} host {host} (pids {' '.join(hit) or 'none'})")
            if kind != "resume":
                self.last_fault_at = time.monotonic()
        elif kind == "kill-replica":
            self.replica_loss.kill()
            self.replica_lost = True
            self.last_fault_at = time.monotonic()
        elif kind == "restore-replica" and self.replica_lost:
            self.replica_lost = False
            self.result.measurements.update(self.replica_loss.restore())
            for check in self.replica_loss.checks:
                self.result.checks.append(check)
                self.event(f"check {check['expect']}: {'passed' if check['passed'] else 'FAILED'}: "
                           f"{check['meaning']}")
            self.replica_loss.checks = []

    def _step_takeover(self, step: Step) -> None:
        host = step.args["host"]
        spec = step.writers[0]
        new = self._spawn_writer(spec, 0)
        assert new.handle.lease_pid is not None  # writer_path.reason(lease=True) said so
        since = self.last_fault_at or time.monotonic()
        deadline = time.monotonic() + self.scenario.lockd.ttl_s * 5 + 20
        attempts = 0
        while True:
            attempts += 1
            granted, detail = self.lockds[host].acquire(self.lease.lockspace, self.lease.key, new.handle.lease_pid)
            if granted or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        took = time.monotonic() - since
        if not granted:
            new.refused = detail
            new.handle.cancel()
            self.wait_writers([new])
            raise AssertionError(f"takeover by {host} never granted: {detail}")
        self.result.measurements["takeover_s"] = round(took, 3)
        fenced = [line.split(" INFO ", 1)[-1] for line in self.lockds[host].log_path.read_text(errors="replace")
                  .splitlines() if " fence " in line]
        if fenced:
            self.result.measurements["storage_fencing_done"] = fenced
            self.event(f"{host}'s lockd fenced before taking over: {'; '.join(fenced)}")
        self.result.measurements["takeover_attempts"] = attempts
        self.event(f"takeover: {host} got the lease {took:.2f} s after the fault ({detail})")
        new.handle.let_go()
        new.let_go = True
        write_started = time.monotonic()
        # librbd's exclusive lock, QEMU's image locks, gluster's eager locks can make the new holder wait
        # for the old one, which is frozen: bounded, and reported as blocked.
        limit = step.args.get("write_timeout_s", TAKEOVER_WRITE_TIMEOUT_S)
        if new.handle.wait(limit) is None:
            self.result.measurements["new_holder_blocked_s"] = limit
            self.event(f"writer {spec.name} still blocked after {limit:.0f} s (the frozen holder keeps a lock "
                       "of the store): killed")
        self.wait_writers([new], timeout_s=0.1)
        self.result.measurements["new_holder_write_s"] = round(time.monotonic() - write_started, 3)
        self.result.measurements["new_holder_write_ok"] = new.exit_code == 0

    def _step_handoff(self, step: Step) -> None:
        source, target = self.lockds[step.args["from"]], self.lockds[step.args["to"]]
        # Owners standing for the VM on each side (a migration's source and destination QEMU).
        vm_a = spawn_stand_in()
        vm_b = spawn_stand_in()
        self.extra_procs += [vm_a, vm_b]
        granted, detail = source.acquire(self.lease.lockspace, self.lease.key, vm_a.pid)
        if not granted:
            raise AssertionError(f"source host could not take the lease: {detail}")
        early, early_detail = target.acquire(self.lease.lockspace, self.lease.key, vm_b.pid)
        self.result.measurements["destination_refused_while_source_holds"] = not early
        self.event(f"destination acquire while the source holds: {'refused' if not early else 'GRANTED'} "
                   f"({early_detail})")
        started = time.monotonic()
        source.release(self.lease.lockspace, self.lease.key)
        released = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            granted, detail = target.acquire(self.lease.lockspace, self.lease.key, vm_b.pid)
            if granted or time.monotonic() - started > 30:
                break
            time.sleep(POLL_S / 10)
        if not granted:
            raise AssertionError(f"destination never got the lease after the release: {detail}")
        done = time.monotonic()
        self.result.measurements["handoff_s"] = round(done - started, 4)
        self.result.measurements["release_s"] = round(released - started, 4)
        self.result.measurements["handoff_attempts"] = attempts
        self.event(f"hand-off: released in {released - started:.3f} s, destination holds it after "
                   f"{done - started:.3f} s ({detail})")

    def _step_migration_window(self, step: Step) -> None:
        """Open (``from``/``to``) or close (``keep``) the store's dual-primary window; a check each. A store
        without one skips the step and says why."""
        label = f"migration-window {step.args['action']}"
        if reason := self.window.reason():
            self.skipped.append({"step": label, "reason": reason})
            self.result.skipped_steps = self.skipped
            self.event(f"{label}: skipped: {reason}")
            return
        if step.args["action"] == "open":
            check = self.window.open(step.args["from"], step.args["to"])
        else:
            check = self.window.close(step.args["keep"])
        self.result.checks.append(check)
        self.event(f"check {check['expect']}: {'passed' if check['passed'] else 'FAILED'}: {check['meaning']}")

    def _step_check(self, step: Step) -> None:
        # Whatever still runs is stopped first: the check reads a volume nobody writes.
        for writer in self.writers.values():
            if writer.exit_code is None and writer.handle.poll() is None:
                writer.handle.kill()
                self.event(f"writer {writer.spec.name} still running at the check: killed")
            if writer.exit_code is None:
                writer.handle.wait(30)
                self._reap(writer)
        counts, corruption = self.read_region()
        expect = step.args["expect"]
        # Writers since the previous check: each check judges its own phase.
        current = [w for w in self.writers.values() if w.spec.name not in self.checked_writers]
        self.checked_writers.update(w.spec.name for w in current)
        admitted = [w for w in current if w.let_go]
        present = [name for name in counts if name not in ("unwritten", "torn")]
        torn = counts.get("torn", 0)
        check: dict[str, Any] = {"expect": expect, "chunks": dict(counts), "chunk_bytes": self.scenario.chunk_bytes,
                                 "writers_admitted": [w.spec.name for w in admitted],
                                 "writers_refused": {w.spec.name: w.refused for w in current if w.refused},
                                 "writers_failed": {w.spec.name: w.error for w in admitted if w.exit_code},
                                 "image_check": corruption}
        foreign = {w.spec.name: w.foreign_reads for w in admitted if w.spec.verify}
        check["foreign_chunks_read_back"] = foreign
        damaged = (len(present) > 1 or torn > 0 or bool(corruption.get("corruptions"))
                   or any(foreign.values()))
        check["damage_detected"] = damaged
        refusal = self.writer_path.refusal
        cannot_open = {w.spec.name: w.error for w in admitted if w.exit_code and refusal.matches(w.error)}
        check["refused_by_image_lock"] = sorted(cannot_open)
        if expect == "damage":
            # The store (or QEMU's image locking on it) refusing the second writer is protection too.
            check["passed"] = damaged or bool(cannot_open)
            if damaged:
                lost = sum(foreign.values())
                check["meaning"] = ("two writers without a lease: damage detected ("
                                    + (f"{lost} chunk(s) read back by a writer were the other's; " if lost else "")
                                    + f"final region {len(present)} writer(s), {torn} torn chunk(s))")
            elif cannot_open:
                check["meaning"] = ("no damage: the store itself refused writer(s) "
                                    f"{', '.join(sorted(cannot_open))} ({refusal.what}), without lockd")
            else:
                check["meaning"] = "no damage observed: " + self._why_no_damage(admitted)
        elif expect == "single-writer":
            check["passed"] = len(admitted) == 1 and not damaged
            check["meaning"] = ("only one writer was admitted and the region is its own" if check["passed"]
                                else "more than one writer wrote, or the region is damaged")
        else:
            last = step.args["writer"]
            late = sum(n for name, n in counts.items() if name not in (last, "unwritten"))
            last_writer = self.writers.get(last)
            last_failed = last_writer is not None and bool(last_writer.exit_code)
            check["late_or_foreign_chunks"] = late
            check["last_writer_failed"] = last_writer.error if last_failed and last_writer else ""
            check["passed"] = late == 0 and (counts.get(last, 0) > 0 or last_failed)
            if late:
                check["meaning"] = f"{late} chunk(s) not {last}'s after its write: " + self._why_late()
            elif last_failed and "new_holder_blocked_s" in self.result.measurements:
                check["meaning"] = (f"nothing of another writer landed, but {last} stayed blocked "
                                    f"{self.result.measurements['new_holder_blocked_s']:.0f} s behind the frozen "
                                    "holder (unavailable, not unsafe)")
            elif last_failed:
                check["meaning"] = (f"nothing of another writer landed, but {last} could not write: "
                                    f"{last_writer.error if last_writer else ''}")
            else:
                check["meaning"] = f"every chunk is {last}'s: nothing of another writer landed after it"
            if check["passed"] and "takeover_s" in self.result.measurements and not self._storage_fenced():
                # Nothing cut the dead holder off: say so, and what kept its writes out this time.
                done = self.result.measurements.get("storage_fencing_done")
                why = f"no storage fencing was done: {'; '.join(done)}" if done else self._why_late()
                check["meaning"] += f" ({why}; only the holder's own lockd stopped it, in this run)"
        self.result.checks.append(check)
        self.event(f"check {expect}: {'passed' if check['passed'] else 'FAILED'}: {check['meaning']} "
                   f"(chunks {dict(counts)})")

    def _why_no_damage(self, admitted: list[Writer]) -> str:
        failed = [w for w in admitted if w.exit_code]
        if failed:
            return "; ".join(f"writer {w.spec.name} could not write: {w.error.splitlines()[-1] if w.error else '?'}"
                             for w in failed)
        return "the writers did not overlap in time"

    def _storage_fenced(self) -> bool:
        """Did a takeover cut the dead holder off the store (its lockd logged a fence that cut something)?"""
        done = self.result.measurements.get("storage_fencing_done", [])
        return any(": none: " not in line for line in done)

    def _why_late(self) -> str:
        support = self.backend.capabilities.features[Feature.FENCING]
        fencing = f"storage fencing: {support.note}" if support.supported else f"no storage fencing ({support.note})"
        return f"{fencing}; lockd fencer {self.scenario.lockd.fencer}"

    def read_region(self) -> tuple[Counter[str], dict[str, Any]]:
        patterns = {w.spec.pattern: w.spec.name for w in self.writers.values()}
        counts: Counter[str] = Counter()
        chunk = self.scenario.chunk_bytes
        with self.service.open(VolumeRef(self.store, self.volume)) as volume:
            for offset in range(0, self.scenario.region_bytes, chunk):
                data = volume.read(offset, chunk)
                first = data[0]
                if data.count(first) != len(data):
                    counts["torn"] += 1
                elif first == 0:
                    counts["unwritten"] += 1
                else:
                    counts[patterns.get(first, f"pattern-{first}")] += 1
        corruption: dict[str, Any] = {}
        if self.fmt == "qcow2":
            done = run(["qemu-img", "check", "-f", "qcow2", "--output=json", self.uri], timeout_s=120, check=False)
            try:
                report = json.loads(done.stdout)
                corruption = {"corruptions": report.get("corruptions", 0), "leaks": report.get("leaks", 0)}
            except ValueError:
                corruption = {"error": (done.stderr.strip() or "qemu-img check printed nothing")[-200:]}
        return counts, corruption

    def _step_provision(self, step: Step) -> None:
        from hvstore.scenarios.provision import provision

        done = provision(self.backend, self.store, step.args["size_bytes"], config_path=self.service.config.path,
                         lab_root=lab_dir(), event=self.event)
        self.result.measurements["provision_commands"] = done.commands
        self.result.measurements["provision_s"] = done.seconds
        if done.lease:
            self.result.measurements["provision_lease"] = done.lease
        if done.failed:
            self.result.measurements["provision_failed"] = done.failed
            self.result.checks.append({"expect": "provisioned", "passed": False, "chunks": {},
                                       "meaning": f"{done.failed['step']} failed: {done.failed['error']}"})
            self.event(f"{done.failed['step']}: FAILED: {done.failed['error']}")
        for skipped in done.skipped:
            self.skipped.append(skipped)
            self.event(f"{skipped['step']}: skipped: {skipped['reason']}")
        self.result.skipped_steps = self.skipped
        self.event(f"provisioned {self.store} volume in {done.seconds:.2f} s ({len(done.commands)} commands)")

    # -- the whole run ------------------------------------------------------------------------------
    def execute(self) -> ScenarioResult:
        scenario = self.scenario
        try:
            self.backend.create(self.volume, scenario.volume_bytes)
            self.uri, self.fmt = self.backend.uri(self.volume), self.backend.qemu_format(self.volume)
            if "replicas" in scenario.requires and (reason := self.replica_loss.reason()):
                raise NotApplicable(reason)
            specs = [w for p in scenario.phases for s in p.steps for w in s.writers]
            for lease in sorted({w.lease for w in specs}):
                if reason := self.writer_path.reason(lease=lease):
                    raise NotApplicable(reason)
            takeover = any(s.kind == "takeover" for p in scenario.phases for s in p.steps)
            if takeover and (reason := self.writer_path.takeover_reason):
                raise NotApplicable(reason)
            with tempfile.TemporaryDirectory(prefix="hvstore-scenario-") as tmp:
                if scenario.uses_lockd:
                    lease_store = scenario_lease_store(self.service.config, self.store, Path(tmp))
                    for host in scenario.hosts:
                        self.lockds[host] = _Lockd(host, Path(tmp), scenario, self.service.config.path, lease_store)
                    self.result.measurements["lease_store"] = describe_lease_store(lease_store)
                    self.event(f"lockd started for {', '.join(scenario.hosts)} (leases in "
                               f"{describe_lease_store(lease_store)}, TTL {scenario.lockd.ttl_s} s, "
                               f"fencer {scenario.lockd.fencer})")
                for phase in scenario.phases:
                    self.event(f"phase {phase.name}")
                    if phase.fresh_volume:
                        self._fresh_volume()
                    for step in phase.steps:
                        self.step(step)
                self._stop_everything()
            if any(not c["passed"] for c in self.result.checks):
                self.result.status = "failed"
                self.result.reason = "; ".join(c["meaning"] for c in self.result.checks if not c["passed"])
            if self.skipped:
                steps_by_reason: dict[str, list[str]] = {}
                for skipped in self.skipped:
                    steps_by_reason.setdefault(skipped["reason"], []).append(skipped["step"])
                self.result.reason = "; ".join(filter(None, [self.result.reason, *(
                    f"skipped {', '.join(steps)}: {reason}" for reason, steps in steps_by_reason.items())]))
        except NotApplicable as exc:
            self.result.status, self.result.reason = "not-applicable", str(exc)
        except (HvstoreError, AssertionError, OSError) as exc:
            self.result.status, self.result.reason = "error", f"{type(exc).__name__}: {exc}"
        finally:
            self._stop_everything()
            if self.replica_lost:
                with suppress(HvstoreError):
                    self.replica_loss.restore()
            with suppress(HvstoreError):
                if self.backend.exists(self.volume):
                    self.backend.delete(self.volume, force=True)
            self.result.measurements.setdefault("storage_fencing", self._fencing_text())
            self.result.seconds = time.monotonic() - self.started
        return self.result

    def _fresh_volume(self) -> None:
        """The scratch volume again, new and empty (same name: every helper object keeps pointing at it)."""
        self.backend.delete(self.volume, force=True)
        self.backend.create(self.volume, self.scenario.volume_bytes)
        self.event(f"fresh volume {self.store}/{self.volume}")

    def _fencing_text(self) -> str:
        support = self.backend.capabilities.features[Feature.FENCING]
        if not support.supported:
            return f"no storage fencing ({support.note})"
        if self.scenario.lockd.fencer == "hvstore" and self.scenario.uses_lockd:
            return f"store fences ({support.note}); lockd fencer hvstore"
        return f"store can fence ({support.note}); not used by this scenario"

    def _stop_everything(self) -> None:
        for writer in self.writers.values():
            if writer.exit_code is None and writer.handle.poll() is None:
                writer.handle.kill()
                writer.handle.wait(10)
        procs = self.extra_procs + [d.proc for d in self.lockds.values()]
        for proc in procs:
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                    proc.kill()
        for proc in procs:
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for writer in self.writers.values():
            if writer.exit_code is None:
                self._reap(writer)


def run_scenario(service: VolumeService, scenario: Scenario, store: str, *, log: Log = lambda _l: None
                 ) -> ScenarioResult:
    try:
        service.backend(store)
    except HvstoreError as exc:
        return ScenarioResult(scenario.name, store, service.config.store(store).kind, "error",
                              f"store unavailable: {exc}")
    return ScenarioRun(service, scenario, store, log).execute()


def scenarios_dir() -> Path:
    """The repository's ``scenarios/`` directory (next to the package)."""
    return Path(__file__).resolve().parents[2] / "scenarios"

