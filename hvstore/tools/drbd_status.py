"""Parsers for DRBD state as the tools print it: ``drbdsetup events2 --now [--statistics]`` and the kernel
log (``dmesg``). Text in, data out; tested on output captured from DRBD 8.4.11 (tests/data/drbd/).

On 8.4, ``drbdsetup status --json`` does not exist and events2 has no resync percentage, so progress is
``out_of_sync_kib`` of the peer device. A peer that is down shows as ``connection:Connecting`` (8.4's
WFConnection). A split brain leaves the connection ``StandAlone``, which a manual ``disconnect`` does too:
only the kernel log tells them apart (``Split-Brain detected but unresolved, dropping connection!``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ResourceState:
    """One resource as one node sees it."""

    name: str
    role: str  # Primary / Secondary
    connection: str  # Connected / Connecting / StandAlone / ...
    peer_role: str  # Primary / Secondary / Unknown
    minor: int
    disk: str  # UpToDate / Inconsistent / Outdated / Diskless / ...
    peer_disk: str  # UpToDate / Inconsistent / DUnknown / ...
    replication: str  # Established / SyncSource / SyncTarget / Off / ...
    size_kib: int
    out_of_sync_kib: int

    @property
    def connected(self) -> bool:
        return self.connection == "Connected"

    @property
    def syncing(self) -> bool:
        return self.replication.startswith(("Sync", "PausedSync", "WFBitMap", "StartingSync"))

    @property
    def both_up_to_date(self) -> bool:
        return self.connected and self.disk == "UpToDate" and self.peer_disk == "UpToDate"


def _fields(line: str) -> tuple[str, str, dict[str, str]]:
    parts = line.split()
    if len(parts) < 2:
        return "", "", {}
    values = dict(p.split(":", 1) for p in parts[2:] if ":" in p)
    return parts[0], parts[1], values


def parse_events2(text: str) -> dict[str, ResourceState]:
    """``drbdsetup events2 --now [--statistics] all`` -> resource name -> state (single-volume resources).

    Lines are ``exists <object> key:value...``; the listing ends with ``exists -``."""
    objects: dict[str, dict[str, dict[str, str]]] = {}
    for line in text.splitlines():
        event, kind, values = _fields(line)
        if event != "exists" or kind == "-" or "name" not in values:
            continue
        objects.setdefault(values["name"], {})[kind] = values
    states = {}
    for name, parts in objects.items():
        resource = parts.get("resource", {})
        connection = parts.get("connection", {})
        device = parts.get("device", {})
        peer = parts.get("peer-device", {})
        if not device:
            continue
        states[name] = ResourceState(
            name=name,
            role=resource.get("role", "Unknown"),
            connection=connection.get("connection", "StandAlone"),
            peer_role=connection.get("role", "Unknown"),
            minor=int(device["minor"]),
            disk=device.get("disk", "Unknown"),
            peer_disk=peer.get("peer-disk", "DUnknown"),
            replication=peer.get("replication", "Off"),
            size_kib=int(device.get("size", 0)),
            out_of_sync_kib=int(peer.get("out-of-sync", 0)),
        )
    return states


_SPLIT_BRAIN = "Split-Brain detected"
_CONNECTED = re.compile(r"conn\( \S+ -> Connected \)")


def split_brain_in_log(kernel_log: str, minor: int) -> bool:
    """True when the kernel log's last word on ``drbd<minor>`` is an unresolved split brain: a
    "Split-Brain detected" line (8.4 also logs "... and resolved" for an automatic recovery, which does
    not count) with no later transition to Connected."""
    tag = f"drbd{minor}:"
    last_split, last_connected = -1, -1
    for index, line in enumerate(kernel_log.splitlines()):
        if tag not in line:
            continue
        if _SPLIT_BRAIN in line and "unresolved" in line:
            last_split = index
        elif _CONNECTED.search(line):
            last_connected = index
    return last_split > last_connected
