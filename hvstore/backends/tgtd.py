"""Driving one running tgtd (tgt 1.0.85) through tgtadm: targets, LUNs, ACLs, CHAP accounts, sessions.

The iSCSI backend (``hvstore.backends.iscsi``) and the Sheepdog backend's exports
(``hvstore.backends.sheepdog``) decide *what* targets a store has; this module knows *how* tgtd is told
(argv and parsers live in ``hvstore.tools.tgtadm``). Target ids are global to one tgtd, so every
sequence that reads and then changes them runs under a host-wide flock next to tgtd's control socket
(``lock()``), shared by every store and process on this host.

tgtd quirks handled here: it reads a LUN's size only when the LUN is created (``reload_lun``); a target
set ``offline`` drops commands for good, so quiescing empties the ACL instead (``quiesced``); it exits
only on ``--mode system --op delete`` once it has no targets (see ``hvstore.lab.tgt``).

How QEMU and libvirt reach a LUN of a tgt target (``lun_uri``, ``lun_disk_xml``) is here too: both backends
hand out the same kind of disk.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from hvstore.errors import BackendUnavailable, Busy, ToolFailed
from hvstore.protocols.libiscsi import Chap
from hvstore.run import Completed, run
from hvstore.tools import tgtadm
from hvstore.tools.tgtadm import TUNED_PARAMETERS, TargetInfo, Tgtadm

DEFAULT_SOCKET = "/var/run/tgtd/socket"
TGTADM_TIMEOUT_S = 30.0
DEFAULT_REMEDY = "run 'hvstore lab up tgt'"


def xml_attr(value: str) -> str:
    """An XML attribute value in single quotes, escaped."""
    return "'" + escape(value, {"'": "&apos;"}) + "'"


def lun_uri(portal: str, iqn: str, lun: int, *, initiator: str = "", user: str = "") -> str:
    """QEMU's filename for LUN ``lun`` of target ``iqn`` on ``portal``: ``iscsi://PORTAL/IQN/LUN``; with
    ``initiator``, a ``json:`` filename (raw over QEMU's iscsi protocol driver) that logs in as that
    initiator, which an ``iscsi://`` URL cannot name, and ``user`` the CHAP user (the password must reach
    QEMU as a secret object, ``password-secret``)."""
    if not initiator:
        return f"iscsi://{portal}/{iqn}/{lun}"
    protocol: dict[str, Any] = {"driver": "iscsi", "transport": "tcp", "portal": portal, "target": iqn,
                                "lun": lun, "initiator-name": initiator}
    if user:
        protocol["user"] = user
    return "json:" + json.dumps({"driver": "raw", "file": protocol}, separators=(",", ":"))


def lun_disk_xml(portal: str, iqn: str, lun: int, *, target: str, initiator: str = "", auth_xml: str = "") -> str:
    """libvirt's network ``<disk>`` (raw, no host cache, virtio) on LUN ``lun`` of target ``iqn``:
    ``initiator`` is the IQN QEMU logs in as, ``auth_xml`` an ``<auth>`` element for CHAP."""
    address, _, port = portal.rpartition(":")
    initiator_xml = f"<initiator><iqn name={xml_attr(initiator)}/></initiator>" if initiator else ""
    return (
        "<disk type='network' device='disk'>"
        "<driver name='qemu' type='raw' cache='none'/>"
        f"<source protocol='iscsi' name={xml_attr(f'{iqn}/{lun}')}>"
        f"<host name={xml_attr(address)} port={xml_attr(port)}/>{auth_xml}{initiator_xml}</source>"
        f"<target dev={xml_attr(target)} bus='virtio'/>"
        "</disk>"
    )


class Tgtd:
    """One tgtd, addressed by its control socket path and port. Stores nothing but the address and the
    wording of "tgtd does not answer": ``owner`` names who drives it (e.g. ``sheepdog store 'sd'``; empty:
    no prefix), ``remedy`` is the next step offered."""

    def __init__(self, control_socket: str = "", control_port: int = 0, *, owner: str = "",
                 remedy: str = DEFAULT_REMEDY) -> None:
        self.control_socket = control_socket
        self.tool = Tgtadm(control_port)
        self.owner = owner
        self.remedy = remedy
        self._lock_depth = 0

    # -- reading ------------------------------------------------------------------------------------
    def targets(self) -> list[TargetInfo]:
        return tgtadm.parse_targets(self.run(self.tool.show_targets()).stdout)

    def find(self, iqn: str) -> TargetInfo | None:
        return next((t for t in self.targets() if t.iqn == iqn), None)

    def get(self, iqn: str, what: str) -> TargetInfo:
        """The target ``iqn``; BackendUnavailable (naming ``what``) when tgtd lacks it."""
        target = self.find(iqn)
        if target is None:
            raise BackendUnavailable(f"{what} has no target in tgtd (restarted?): "
                                     "run 'hvstore lab up tgt' to re-apply the store's targets")
        return target

    def parameters(self, tid: int) -> dict[str, str]:
        return tgtadm.parse_parameters(self.run(self.tool.show_parameters(tid)).stdout)

    # -- changing -----------------------------------------------------------------------------------
    def add_target(self, iqn: str, backing_store: Path | str, lun: int, *, initiators: Sequence[str],
                   chap: Chap | None, bstype: str = "rdwr") -> int:
        """Create target ``iqn`` with ``lun`` on ``backing_store`` (tgt's backing store ``bstype``, see
        ``Tgtadm.new_lun``), the tuned parameters, the ACL and the CHAP account; returns its tid. Nothing
        is left behind when a step fails."""
        with self.lock():
            tid = tgtadm.free_tid(self.targets())
            self.run(self.tool.new_target(tid, iqn))
            try:
                self.run(self.tool.new_lun(tid, lun, str(backing_store), bstype=bstype))
                for key, value in TUNED_PARAMETERS.items():
                    self.run(self.tool.set_parameter(tid, key, value))
                for initiator in dict.fromkeys(initiators):
                    self.run(self.tool.bind_initiator(tid, initiator))
                if chap is not None:
                    # Accounts are global to tgtd; stores sharing a user share its password.
                    if chap.user not in tgtadm.parse_accounts(self.run(self.tool.show_accounts()).stdout):
                        self.run(self.tool.new_account(chap.user, chap.password), secret=chap.password)
                    self.run(self.tool.bind_account(tid, chap.user))
            except BaseException:
                with suppress(Exception):
                    self.run(self.tool.delete_target(tid, force=True))
                raise
            return tid

    def remove_target(self, iqn: str, *, force: bool, what: str, in_use: str = "in use") -> None:
        """Delete target ``iqn`` if tgtd has it; Busy ("``what`` is ``in_use`` by INITIATORS") while
        initiators are logged in, unless ``force`` (which drops their sessions)."""
        with self.lock():
            target = self.find(iqn)
            if target is None:
                return
            if target.sessions and not force:
                raise Busy(f"{what} is {in_use} by {', '.join(s.initiator for s in target.sessions)}; "
                           "log them out or use --force")
            self.run(self.tool.delete_target(target.tid, force=True))

    def delete_target(self, tid: int) -> None:
        with self.lock():
            self.run(self.tool.delete_target(tid, force=True))

    def bind(self, target: TargetInfo, initiator: str) -> None:
        if initiator not in target.acl:
            with self.lock():
                self.run(self.tool.bind_initiator(target.tid, initiator))

    def unbind(self, target: TargetInfo, initiator: str) -> None:
        if initiator in target.acl:
            with self.lock():
                self.run(self.tool.unbind_initiator(target.tid, initiator))

    def close_sessions(self, target: TargetInfo, initiator: str) -> list[int]:
        """Close every session of ``initiator`` on ``target``; returns their ids."""
        closed = []
        with self.lock():
            for session in target.sessions:
                if session.initiator != initiator:
                    continue
                for conn in session.connections:
                    with suppress(ToolFailed):  # it may have gone by itself meanwhile
                        self.run(self.tool.close_connection(target.tid, session.session_id, conn.connection_id))
                closed.append(session.session_id)
        return closed

    def reload_lun(self, target: TargetInfo, lun: int) -> None:
        """tgt reads a LUN's size when the LUN is created: re-create ``lun`` over the same file."""
        backing = next(u.backing_path for u in target.luns if u.lun == lun)
        with self.lock():
            self.run(self.tool.delete_lun(target.tid, lun))
            self.run(self.tool.new_lun(target.tid, lun, str(backing)))

    @contextmanager
    def quiesced(self, iqn: str, what: str) -> Iterator[TargetInfo]:
        """Nobody logged in and new logins refused (ACL emptied) for the duration; Busy otherwise.

        Setting the target 'offline' is not usable: tgt then drops commands, which never complete. The
        host lock is not held while the caller works (a copy may take long); the emptied ACL keeps the
        target quiet meanwhile.
        """
        with self.lock():
            target = self.get(iqn, what)
            for initiator in target.acl:
                self.run(self.tool.unbind_initiator(target.tid, initiator))
        try:
            sessions = self.get(iqn, what).sessions
            if sessions:
                raise Busy(f"{what} is in use by {', '.join(s.initiator for s in sessions)}: "
                           "this operation is offline")
            yield target
        finally:
            with self.lock():
                for initiator in target.acl:
                    self.run(self.tool.bind_initiator(target.tid, initiator))

    # -- plumbing -----------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Host-wide: one tgtadm read-modify sequence at a time per tgtd, across stores and processes.

        Re-entrant within this object (a flock taken twice through two descriptors would deadlock).
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        path = Path(f"{self.control_socket or DEFAULT_SOCKET}.{self.tool.control_port}.hvstore.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0

    def run(self, argv: list[str], *, secret: str | None = None) -> Completed:
        """Run tgtadm; BackendUnavailable when tgtd cannot be reached, ToolFailed (``secret`` masked)
        when it refused the request."""
        try:
            return run(argv, timeout_s=TGTADM_TIMEOUT_S, env=tgtadm.env(self.control_socket))
        except ToolFailed as exc:
            message = tgtadm.error_line(exc.stderr_tail)
            if exc.returncode != tgtadm.REFUSED_EXIT_CODE:  # not tgtd saying no: tgtd is not there
                owner = f"{self.owner}: " if self.owner else ""
                raise BackendUnavailable(
                    f"{owner}tgtd does not answer on {self.control_socket or DEFAULT_SOCKET} ({message}); "
                    f"{self.remedy}"
                ) from None
            shown = tgtadm.redact(argv, secret) if secret else argv
            raise ToolFailed(shown, exc.returncode, exc.stderr_tail) from None
