"""tgtadm (tgt 1.0.85): argv builders and output parsers. Text in, data out; nothing here runs a tool.

tgtadm talks to one tgtd over a unix socket: ``$TGT_IPC_SOCKET`` (default ``/var/run/tgtd/socket``) with
``.<control port>`` appended; the caller passes the socket path through the environment (``env()``) and
the port with ``-C``. Target ids (tids) are global to that tgtd, hence the caller's host-wide lock.

Output shapes are those of tgt 1.0.85 (captured under ``tests/data/tgtadm/``): ``--mode target --op show``
prints one indented block per target; ``--op show --tid N`` prints that target's ``key=value`` iSCSI
parameters instead; errors are one ``tgtadm: ...`` line on stderr with exit status 22.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TGTADM = "tgtadm"
# tgtadm exits 22 (EINVAL) when tgtd refused the request; other codes (104, 107, 111) mean it could not
# talk to tgtd at all.
REFUSED_EXIT_CODE = 22
# The parameters that make 1 MiB writes 3-4x faster than Debian's defaults (8 KiB data segments),
# measured on this machine (ENVIRONMENT.md, iSCSI).
TUNED_PARAMETERS: dict[str, str] = {
    "MaxRecvDataSegmentLength": "262144",
    "MaxXmitDataSegmentLength": "262144",
    "MaxBurstLength": "1048576",
    "FirstBurstLength": "262144",
    "InitialR2T": "No",
}


@dataclass(frozen=True)
class Tgtadm:
    """Builds tgtadm argv lists for one tgtd (``control_port``: tgtd's ``-C``; 0 is tgt's default)."""

    control_port: int = 0

    def _base(self, mode: str, op: str) -> list[str]:
        argv = [TGTADM]
        if self.control_port:
            argv += ["-C", str(self.control_port)]
        return [*argv, "--lld", "iscsi", "--mode", mode, "--op", op]

    def show_targets(self) -> list[str]:
        return self._base("target", "show")

    def show_parameters(self, tid: int) -> list[str]:
        return [*self._base("target", "show"), "--tid", str(tid)]

    def new_target(self, tid: int, iqn: str) -> list[str]:
        return [*self._base("target", "new"), "--tid", str(tid), "--targetname", iqn]

    def delete_target(self, tid: int, *, force: bool = False) -> list[str]:
        return [*self._base("target", "delete"), *(["--force"] if force else []), "--tid", str(tid)]

    def set_parameter(self, tid: int, name: str, value: str) -> list[str]:
        return [*self._base("target", "update"), "--tid", str(tid), "--name", name, "--value", value]

    def bind_initiator(self, tid: int, initiator_iqn: str) -> list[str]:
        return [*self._base("target", "bind"), "--tid", str(tid), "--initiator-name", initiator_iqn]

    def unbind_initiator(self, tid: int, initiator_iqn: str) -> list[str]:
        return [*self._base("target", "unbind"), "--tid", str(tid), "--initiator-name", initiator_iqn]

    def new_lun(self, tid: int, lun: int, backing_store: str, *, bstype: str = "rdwr") -> list[str]:
        """LUN ``lun`` of target ``tid`` on ``backing_store``, read by tgt's backing store ``bstype``: rdwr
        (the default) does pread/pwrite on a file through tgtd's worker threads; other stores take their
        own ``backing_store`` syntax (sheepdog: ``tcp:HOST:PORT:VDI`` or ``unix:PATH:VDI``)."""
        return [*self._base("logicalunit", "new"), "--tid", str(tid), "--lun", str(lun),
                "--backing-store", backing_store, "--bstype", bstype]

    def delete_lun(self, tid: int, lun: int) -> list[str]:
        return [*self._base("logicalunit", "delete"), "--tid", str(tid), "--lun", str(lun)]

    def show_accounts(self) -> list[str]:
        return self._base("account", "show")

    def new_account(self, user: str, password: str) -> list[str]:
        """tgtadm only takes the password on its command line: never print this argv (see ``redact``)."""
        return [*self._base("account", "new"), "--user", user, "--password", password]

    def delete_account(self, user: str) -> list[str]:
        return [*self._base("account", "delete"), "--user", user]

    def bind_account(self, tid: int, user: str) -> list[str]:
        return [*self._base("account", "bind"), "--tid", str(tid), "--user", user]

    def shutdown(self) -> list[str]:
        """Make tgtd exit (it ignores SIGTERM in the foreground); refused while targets exist."""
        return self._base("system", "delete")

    def close_connection(self, tid: int, session_id: int, connection_id: int) -> list[str]:
        return [*self._base("conn", "delete"), "--tid", str(tid), "--sid", str(session_id),
                "--cid", str(connection_id)]


def env(control_socket: str) -> dict[str, str]:
    """Environment that points tgtd/tgtadm at ``control_socket`` (empty: tgt's default)."""
    return {"TGT_IPC_SOCKET": control_socket} if control_socket else {}


# -- parsed values --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Connection:
    connection_id: int
    address: str


@dataclass(frozen=True)
class Session:
    """One I_T nexus: an initiator logged in to the target."""

    session_id: int
    initiator: str
    connections: tuple[Connection, ...]


@dataclass(frozen=True)
class LogicalUnit:
    lun: int
    kind: str  # "controller" (LUN 0, always there) or "disk"
    size_mb: int  # tgt prints decimal MB (10^6 bytes), rounded
    block_size: int
    backing_path: str | None
    backing_type: str


@dataclass(frozen=True)
class TargetInfo:
    tid: int
    iqn: str
    state: str
    sessions: tuple[Session, ...]
    luns: tuple[LogicalUnit, ...]
    accounts: tuple[str, ...]
    acl: tuple[str, ...]


# -- parsers --------------------------------------------------------------------------------------
_TARGET_RE = re.compile(r"^Target (\d+): (\S+)$")
_NEXUS_RE = re.compile(r"^I_T nexus: (\d+)$")
_INITIATOR_RE = re.compile(r"^Initiator: (\S+)(?: alias: .*)?$")
_CONNECTION_RE = re.compile(r"^Connection: (\d+)$")
_SIZE_RE = re.compile(r"^(\d+) MB, Block size: (\d+)$")


def parse_targets(text: str) -> list[TargetInfo]:
    """Parse ``tgtadm --mode target --op show``: every target with its sessions, LUNs, accounts, ACL."""
    targets: list[TargetInfo] = []
    for block in _split_targets(text):
        header = _TARGET_RE.match(block[0].strip())
        if header is None:
            raise ValueError(f"tgtadm show: unexpected line {block[0]!r}")
        targets.append(_parse_target(int(header.group(1)), header.group(2), block[1:]))
    return targets


def _split_targets(text: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("Target "):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
        else:
            raise ValueError(f"tgtadm show: text before the first target: {line!r}")
    return blocks


def _parse_target(tid: int, iqn: str, lines: list[str]) -> TargetInfo:
    section = ""
    state = ""
    sessions: list[Session] = []
    luns: list[dict[str, str]] = []
    accounts: list[str] = []
    acl: list[str] = []
    for raw in lines:
        line = raw.strip()
        if raw.startswith("    ") and not raw.startswith("     ") and line.endswith(":"):
            section = line[:-1]  # "System information", "I_T nexus information", ...
            continue
        if section == "System information" and line.startswith("State: "):
            state = line.removeprefix("State: ")
        elif section == "I_T nexus information":
            if m := _NEXUS_RE.match(line):
                sessions.append(Session(int(m.group(1)), "", ()))
            elif (m := _INITIATOR_RE.match(line)) and sessions:
                sessions[-1] = Session(sessions[-1].session_id, m.group(1), sessions[-1].connections)
            elif (m := _CONNECTION_RE.match(line)) and sessions:
                last = sessions[-1]
                sessions[-1] = Session(last.session_id, last.initiator,
                                       (*last.connections, Connection(int(m.group(1)), "")))
            elif line.startswith("IP Address: ") and sessions and sessions[-1].connections:
                last = sessions[-1]
                conn = Connection(last.connections[-1].connection_id, line.removeprefix("IP Address: "))
                sessions[-1] = Session(last.session_id, last.initiator, (*last.connections[:-1], conn))
        elif section == "LUN information":
            key, _, value = line.partition(": ")
            if key == "LUN":
                luns.append({"LUN": value})
            elif luns:
                luns[-1][key.rstrip(":")] = value
        elif section == "Account information":
            accounts.append(line)
        elif section == "ACL information":
            acl.append(line)
    return TargetInfo(tid, iqn, state, tuple(sessions), tuple(_lun(fields) for fields in luns),
                      tuple(accounts), tuple(acl))


def _lun(fields: dict[str, str]) -> LogicalUnit:
    size = _SIZE_RE.match(fields.get("Size", ""))
    path = fields.get("Backing store path", "None")
    return LogicalUnit(
        lun=int(fields["LUN"]),
        kind=fields.get("Type", ""),
        size_mb=int(size.group(1)) if size else 0,
        block_size=int(size.group(2)) if size else 0,
        backing_path=None if path == "None" else path,
        backing_type=fields.get("Backing store type", ""),
    )


def parse_parameters(text: str) -> dict[str, str]:
    """Parse ``tgtadm --mode target --op show --tid N``: the target's iSCSI parameters."""
    params: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep:
            params[key] = value
    return params


def parse_accounts(text: str) -> list[str]:
    """Parse ``tgtadm --mode account --op show`` (``Account list:`` then one user per line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0] == "Account list:":
        lines = lines[1:]
    return lines


def free_tid(targets: list[TargetInfo]) -> int:
    """The lowest target id not in use (tids start at 1; 0 is invalid)."""
    used = {t.tid for t in targets}
    tid = 1
    while tid in used:
        tid += 1
    return tid


def redact(argv: list[str], secret: str) -> list[str]:
    """``argv`` with ``secret`` replaced, for error messages."""
    return ["********" if arg == secret else arg for arg in argv]


def error_line(stderr: str) -> str:
    """tgtadm's own message without the ``tgtadm: `` prefix (``can't find the target``)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1].removeprefix("tgtadm: ").strip() if lines else ""
