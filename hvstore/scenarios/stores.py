"""What a scenario can do to a store besides writing: lose one replica, open a migration window.

Two per-backend tables (a backend kind not listed gets the class that says why it cannot):

- ``REPLICA_LOSS`` (the ``kill-replica`` / ``restore-replica`` faults of ``node-loss``): gluster kills one
  brick process of a replicated volume (``volume start force`` restarts it); rbd kills one ``ceph-osd``
  process of the lab (needs a pool of size >= 3 with min_size below it; ``hvstore lab up ceph`` restarts
  it); drbd freezes the node VM that is *not* Primary (SIGSTOP of its QEMU: the peer disappears
  mid-write), then thaws it; it reconnects and the survivor resyncs it.
- ``MIGRATION_WINDOWS`` (the ``migration-window`` step): drbd's dual-primary window. Outside it DRBD refuses
  a second Primary; ``migrate_prepare`` opens it (both Primary), ``migrate_finish`` closes it keeping one.
  Other stores have no such window (any host may open their volumes; only leases order them).

Scenario hosts stand for the store's nodes in order (the first host is the first node), where the store
has nodes. Faults of the lab's processes go through ``hvstore.lab`` (pids recorded by the lab, never by
name); each ``restore`` returns figures (seconds to come back, to resync).
"""

from __future__ import annotations

import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hvstore.errors import BackendUnavailable, Busy, HvstoreError
from hvstore.model import Feature
from hvstore.run import run

Event = Callable[[str], None]
LAB_UP_ATTEMPTS = 3
LAB_UP_RETRY_S = 5.0


class StoreFault(ABC):
    """One store-specific action of a scenario, on one volume. ``reason`` is None when it can run."""

    def __init__(self, backend: Any, volume: str, hosts: tuple[str, ...], lab_root: Path, event: Event) -> None:
        self.backend = backend
        self.volume = volume
        self.hosts = hosts
        self.lab_root = lab_root
        self.event = event

    @abstractmethod
    def reason(self) -> str | None:
        """None when this store can do it here, else why not (shown in the scenario's result)."""

    def _lab(self) -> Any:
        from hvstore.lab.service import Lab

        return Lab(self.lab_root)

    def _lab_up(self, service: str) -> None:
        from hvstore.lab import LabController

        LabController(self.lab_root).up([service])

    def _node(self, host: str) -> str:
        """The store node scenario host ``host`` stands for (same position)."""
        nodes = list(self.backend.config.nodes)
        index = self.hosts.index(host)
        if index >= len(nodes):
            raise HvstoreError(f"scenario host {host} has no node in store {self.backend.store} ({', '.join(nodes)})")
        return nodes[index]

    def _kill_lab_process(self, name: str) -> int:
        """SIGKILL the daemon the lab runs as ``name`` (a crash, not a shutdown); its pid."""
        pid = self._lab().daemon_pid(name)
        if pid is None:
            raise HvstoreError(f"lab process {name} is not running (hvstore lab status)")
        os.kill(pid, signal.SIGKILL)
        return pid


# -- replica loss -----------------------------------------------------------------------------------------
class ReplicaLoss(StoreFault):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.checks: list[dict[str, Any]] = []  # what ``restore`` verified, as scenario checks

    @abstractmethod
    def kill(self) -> None:
        """Take one replica away now (events say which)."""

    @abstractmethod
    def restore(self) -> dict[str, Any]:
        """Bring it back and wait until the store is whole again; figures (seconds, resynced KiB). What it
        verified on the way goes to ``checks``."""


class NoReplicaLoss(ReplicaLoss):
    """Stores whose replicas this runner cannot take away: the reason comes from the capability table."""

    def reason(self) -> str:
        support = self.backend.capabilities.features[Feature.REPLICATION]
        if not support.supported:
            return f"no replicas: {support.note}"
        return f"no replica of a {self.backend.kind} store can be taken away here ({support.note})"

    def kill(self) -> None:
        raise HvstoreError(self.reason())

    def restore(self) -> dict[str, Any]:
        return {}


class SheepdogFakeReplicas(NoReplicaLoss):
    def reason(self) -> str:
        return ("the lab's Sheepdog is a fake single-process server (real sheep cannot be installed here): its "
                "copies are not separate processes that could be lost")


class GlusterBrickLoss(ReplicaLoss):
    def _paths(self) -> Any:
        from hvstore.tools.gluster_cli import GlusterdPaths

        return GlusterdPaths(self.lab_root / "gluster")

    def reason(self) -> str | None:
        from hvstore.tools.gluster_cli import cli_argv, parse_volume_info

        name = self.backend.config.volume
        info = parse_volume_info(run(cli_argv(self._paths(), "volume", "info", name, "--xml"), timeout_s=60).stdout)[0]
        if info.replica_count < 2:
            return f"gluster volume {info.name} is {info.type.lower()} (1 copy): losing a brick loses data"
        return None

    def kill(self) -> None:
        from hvstore.tools.gluster_cli import cli_argv, parse_volume_status

        name = self.backend.config.volume
        status = parse_volume_status(run(cli_argv(self._paths(), "volume", "status", name, "--xml"),
                                         timeout_s=60).stdout)
        brick = next(b for b in status[0].bricks if b.online and b.pid)
        os.kill(brick.pid, signal.SIGKILL)
        self.event(f"fault: killed brick {brick.path} (pid {brick.pid}) of {name}")

    def restore(self) -> dict[str, Any]:
        from hvstore.tools.gluster_cli import cli_argv

        name = self.backend.config.volume
        started = time.monotonic()
        run(cli_argv(self._paths(), "volume", "start", name, "force"), timeout_s=120)
        seconds = round(time.monotonic() - started, 3)
        self.event(f"restored: {name} bricks restarted (volume start force) in {seconds} s")
        return {"replica_back_s": seconds}


class CephOsdLoss(ReplicaLoss):
    """One of the lab's OSD processes (``ceph-osd.N``) killed with SIGKILL."""

    killed: str | None = None

    def _ceph(self, *args: str) -> str:
        cfg = self.backend.config
        argv = ["ceph", "--conf", cfg.conf, "--id", cfg.user, *(["--keyring", cfg.keyring] if cfg.keyring else []),
                *args]
        return run(argv, timeout_s=60).stdout

    def reason(self) -> str | None:
        osds = self._ceph("osd", "ls").split()
        pool = self.backend.config.pool
        size = int(self._ceph("osd", "pool", "get", pool, "size").split()[-1])
        min_size = int(self._ceph("osd", "pool", "get", pool, "min_size").split()[-1])
        if len(osds) < 3 or size < 3 or min_size >= size:
            return (f"the cluster has {len(osds)} OSD(s) and pool {pool} size {size}, min_size {min_size}: "
                    "losing one of 3 replicas needs 3 OSDs, size 3 and min_size 2")
        running = [f"ceph-osd.{osd}" for osd in osds if self._lab().running(f"ceph-osd.{osd}")]
        if len(running) < len(osds):
            return f"only {len(running)} of {len(osds)} OSD processes run here (hvstore lab up ceph)"
        return None

    def kill(self) -> None:
        self.killed = sorted(f"ceph-osd.{osd}" for osd in self._ceph("osd", "ls").split())[-1]
        pid = self._kill_lab_process(self.killed)
        self.event(f"fault: killed {self.killed} (pid {pid}, SIGKILL) of 3; pool {self.backend.config.pool} "
                   "keeps min_size 2")

    def restore(self) -> dict[str, Any]:
        started = time.monotonic()
        for attempt in range(1, LAB_UP_ATTEMPTS + 1):
            try:
                self._lab_up("ceph")  # restarts the dead OSD and waits until it is up with its new address
                break
            except BackendUnavailable as exc:
                # Others share the lab: once, while someone else restarted the cluster, the restarted OSD
                # exited at once ("ceph-osd.2 exited"); the next attempt finds it running or starts it.
                if attempt == LAB_UP_ATTEMPTS:
                    raise
                self.event(f"restore attempt {attempt} failed ({exc}); retrying")
                time.sleep(LAB_UP_RETRY_S)
        seconds = round(time.monotonic() - started, 3)
        self.event(f"restored: {self.killed} restarted and up in {seconds} s (hvstore lab up ceph)")
        return {"replica_back_s": seconds}


class DrbdPeerLoss(ReplicaLoss):
    """The node that is not Primary disappears: its whole VM is frozen (SIGSTOP of its QEMU: no CPU, no
    network, no disk), then thawed. Not a kill: the lab's node file systems are ext2 without a journal, and a
    killed VM came back with a damaged /data (fsck needed), which would harm every other volume there."""

    peer: str | None = None
    primary: str | None = None
    frozen_pid: int | None = None
    resource = ""

    def reason(self) -> str | None:
        states = self.backend.states(self.volume)
        if not all(s.disk == "UpToDate" and s.connected for s in states.values()):
            return f"the resource is not connected and UpToDate on both nodes: {states}"
        return None

    def kill(self) -> None:
        self.primary = self.backend.primary(self.volume)
        self.resource = "hv-" + self.backend.uri(self.volume).removeprefix("/dev/drbd")  # asked while both answer
        self.peer = next(node for node in self.backend.nodes if node != self.primary)
        self.frozen_pid = self._lab().daemon_pid(self.peer)
        if self.frozen_pid is None:
            raise HvstoreError(f"lab process {self.peer} is not running (hvstore lab status)")
        os.kill(self.frozen_pid, signal.SIGSTOP)
        self.event(f"fault: DRBD peer {self.peer} gone (its VM frozen: SIGSTOP of QEMU pid {self.frozen_pid}); "
                   f"{self.primary} stays Primary")

    def restore(self) -> dict[str, Any]:
        # info() reports an unreachable node instead of failing: the survivor's view of the lost peer.
        survivor = self._survivor_view()
        started = time.monotonic()
        assert self.frozen_pid is not None
        os.kill(self.frozen_pid, signal.SIGCONT)
        self._wait_answers()
        booted = time.monotonic()
        self.backend.unfence_peer(self.volume)  # connects what is still StandAlone, waits for UpToDate/UpToDate
        done = time.monotonic()
        states = self.backend.states(self.volume)
        copies = self._copy_digests()
        figures = {"survivor_while_peer_gone": {k: survivor.get(k) for k in ("role", "disk", "connection")},
                   "resync_kib": survivor.get("out_of_sync_kib"), "replica_back_s": round(booted - started, 3),
                   "resync_s": round(done - booted, 3),
                   "after_resync": {node: f"{s.role} {s.disk} {s.connection}" for node, s in states.items()},
                   "copy_digests": copies}
        same = len(set(copies.values())) == 1
        self.checks.append({"expect": "replica-resynced", "passed": same and all(
            s.disk == "UpToDate" and s.connected for s in states.values()), "chunks": {},
            "meaning": (f"{self.peer} came back and resynced: both nodes UpToDate, their copies identical" if same
                        else f"after the resync the copies differ: {copies}")})
        self.event(f"restored: {self.peer} thawed and answering in {figures['replica_back_s']} s, resynced "
                   f"{figures['resync_kib']} KiB in {figures['resync_s']} s: {figures['after_resync']}; "
                   f"md5 of each node's copy {copies}")
        return figures

    def _survivor_view(self) -> dict[str, Any]:
        """How the Primary sees the resource while its peer is gone, asked of the Primary alone (the frozen
        node's agent would only time out). Resource ``hv-<minor>`` on ``/dev/drbd<minor>``: the backend's
        naming (hvstore.backends.drbd)."""
        from hvstore.tools import drbd_conf, drbd_status

        assert self.primary is not None
        events = self.backend.nodes[self.primary].run(drbd_conf.events_argv(self.resource), timeout_s=30).stdout
        state = drbd_status.parse_events2(events)[self.resource]
        return {"role": state.role, "disk": state.disk, "connection": state.connection,
                "out_of_sync_kib": state.out_of_sync_kib}

    def _wait_answers(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.backend.nodes[self.peer].run(["true"], timeout_s=5)
                return
            except HvstoreError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _copy_digests(self) -> dict[str, str]:
        """md5 of the data part of each node's backing device (``/dev/loop<minor>`` under ``/dev/drbd<minor>``:
        the backend's layout, internal metadata after the data), read beside DRBD: the copies themselves."""
        minor = self.backend.uri(self.volume).removeprefix("/dev/drbd")
        size = self.backend.info(self.volume).size_bytes
        return {node: executor.run(["sh", "-c", f"head -c {size} /dev/loop{minor} | md5sum"],
                                   timeout_s=300).stdout.split()[0] for node, executor in self.backend.nodes.items()}


REPLICA_LOSS: dict[str, type[ReplicaLoss]] = {
    "gluster": GlusterBrickLoss,
    "rbd": CephOsdLoss,
    "drbd": DrbdPeerLoss,
    "sheepdog": SheepdogFakeReplicas,
}


def replica_loss(backend: Any, volume: str, hosts: tuple[str, ...], lab_root: Path, event: Event) -> ReplicaLoss:
    return REPLICA_LOSS.get(backend.kind, NoReplicaLoss)(backend, volume, hosts, lab_root, event)


# -- migration window ---------------------------------------------------------------------------------------
class MigrationWindow(StoreFault):
    @abstractmethod
    def open(self, source: str, target: str) -> dict[str, Any]:
        """Show the target refused as a second writer, open the window, show it admitted: a check."""

    @abstractmethod
    def close(self, keep: str) -> dict[str, Any]:
        """Close the window keeping ``keep``; show the other refused again: a check."""


class NoMigrationWindow(MigrationWindow):
    def reason(self) -> str:
        support = self.backend.capabilities.features[Feature.SHARED_ACCESS]
        access = "shared access" if support.supported else "no shared access"
        return f"{self.backend.kind} has no dual-primary window ({access}: {support.note})"

    def open(self, source: str, target: str) -> dict[str, Any]:
        raise HvstoreError(self.reason())

    def close(self, keep: str) -> dict[str, Any]:
        raise HvstoreError(self.reason())


class DrbdDualPrimary(MigrationWindow):
    def reason(self) -> str | None:
        return None

    def _promote(self, node: str) -> str | None:
        """None when ``node`` became Primary, else DRBD's refusal."""
        try:
            self.backend.set_role(self.volume, node, "primary")
        except Busy as exc:
            return str(exc)
        return None

    def open(self, source: str, target: str) -> dict[str, Any]:
        src, dst = self._node(source), self._node(target)
        if self.backend.primary(self.volume) != src:
            self.backend.switch_primary(self.volume, src)
        refused = self._promote(dst)
        self.event(f"second Primary {dst} outside the window: " + (f"refused ({refused})" if refused else "ALLOWED"))
        started = time.monotonic()
        self.backend.migrate_prepare(self.volume)
        opened = round(time.monotonic() - started, 3)
        roles = {node: s.role for node, s in self.backend.states(self.volume).items()}
        both = all(role == "Primary" for role in roles.values())
        self.event(f"window opened in {opened} s: roles {roles}")
        passed = refused is not None and both
        return {"expect": "dual-primary-window", "passed": passed, "chunks": {}, "window_open_s": opened,
                "refused_outside_window": refused or "", "roles_inside_window": roles,
                "meaning": (f"{dst} refused as second Primary outside the window, Primary with {src} inside it"
                            if passed else f"outside: {'refused' if refused else 'allowed'}; inside: {roles}")}

    def close(self, keep: str) -> dict[str, Any]:
        node = self._node(keep)
        other = next(n for n in self.backend.nodes if n != node)
        started = time.monotonic()
        self.backend.migrate_finish(self.volume, keep=node)
        closed = round(time.monotonic() - started, 3)
        roles = {n: s.role for n, s in self.backend.states(self.volume).items()}
        refused = self._promote(other)
        self.event(f"window closed in {closed} s keeping {node}: roles {roles}; {other} as second Primary: "
                   + (f"refused ({refused})" if refused else "ALLOWED"))
        passed = roles.get(node) == "Primary" and roles.get(other) == "Secondary" and refused is not None
        return {"expect": "dual-primary-closed", "passed": passed, "chunks": {}, "window_close_s": closed,
                "roles_after_window": roles, "refused_after_window": refused or "",
                "meaning": (f"{node} alone Primary after the window; {other} refused again" if passed
                            else f"after the window: roles {roles}, {other} {'refused' if refused else 'ALLOWED'}")}


MIGRATION_WINDOWS: dict[str, type[MigrationWindow]] = {"drbd": DrbdDualPrimary}


def migration_window(backend: Any, volume: str, hosts: tuple[str, ...], lab_root: Path,
                     event: Event) -> MigrationWindow:
    return MIGRATION_WINDOWS.get(backend.kind, NoMigrationWindow)(backend, volume, hosts, lab_root, event)
