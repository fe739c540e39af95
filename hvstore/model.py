"""Values shared by every layer: volume references, volume and snapshot info, capability tables.

All values are frozen dataclasses with ``to_json()`` giving the stable snake_case shape the CLI prints
with ``--json``.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hvstore.errors import InvalidArgument

NAME_MAX = 64
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# Volumes being built (import, clone) carry this prefix until they are complete; a name a user
# can choose never starts with it, so a crashed build is recognisable and removable.
PARTIAL_PREFIX = ".partial."


def validate_name(name: str, *, what: str = "volume name") -> str:
    """Return ``name`` if it is a valid volume/snapshot/store name, else raise InvalidArgument.

    Allowed: 1-64 characters of letters, digits, ``. _ + -``, starting with a letter or digit. No path
    separators, no ``@`` (it separates snapshots), nothing a shell or an rbd spec would misread.
    """
    if not name:
        raise InvalidArgument(f"invalid {what}: empty")
    if len(name) > NAME_MAX:
        raise InvalidArgument(f"invalid {what} {name[:20]!r}...: longer than {NAME_MAX} characters")
    if "/" in name or "\\" in name:
        raise InvalidArgument(f"invalid {what} {name!r}: path separators are not allowed")
    if not _NAME_RE.match(name):
        raise InvalidArgument(
            f"invalid {what} {name!r}: use letters, digits and . _ + - (starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class VolumeRef:
    """``STORE/NAME`` or, for a snapshot, ``STORE/NAME@SNAP``."""

    store: str
    name: str
    snapshot: str | None = None

    @classmethod
    def parse(cls, text: str, *, allow_snapshot: bool = False) -> VolumeRef:
        store, sep, rest = text.partition("/")
        if not sep or not store:
            raise InvalidArgument(f"invalid volume reference {text!r}: expected STORE/NAME")
        name, at, snap = rest.partition("@")
        if at and not allow_snapshot:
            raise InvalidArgument(f"invalid volume reference {text!r}: a snapshot is not expected here")
        validate_name(store, what="store name")
        validate_name(name)
        if at:
            validate_name(snap, what="snapshot name")
        return cls(store, name, snap if at else None)

    def __str__(self) -> str:
        base = f"{self.store}/{self.name}"
        return f"{base}@{self.snapshot}" if self.snapshot else base


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    size_bytes: int
    protected: bool = False
    created: str | None = None  # ISO 8601, when the backend records it

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class VolumeInfo:
    """What ``info`` and ``list`` return. ``used_bytes`` is None when the backend cannot tell cheaply."""

    store: str
    name: str
    size_bytes: int
    format: str
    used_bytes: int | None = None
    parent: str | None = None  # "NAME@SNAP" for a clone that is not flattened
    snapshots: tuple[SnapshotInfo, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["snapshots"] = [s.to_json() for s in self.snapshots]
        data["details"] = dict(self.details)
        return data


@dataclass(frozen=True)
class LeaseSpec:
    """What lockd locks for a volume: ``<lease><lockspace>LOCKSPACE</lockspace><key>KEY</key>``."""

    lockspace: str
    key: str


@dataclass(frozen=True)
class FenceResult:
    """What ``Backend.fence`` did to cut a dead host off one volume's data path.

    ``method``: "blocklist watchers" (RBD), "acl removal" (iSCSI), "outdate peer" (DRBD) or "none" (the
    volume had nothing of the dead host to cut off, or the dead host was not one the store knows).
    ``fenced``: the clients/initiators/nodes cut off (empty: none of the dead host's was there).
    ``seconds``: wall time until the fence was in force. ``note``: one line for the log (never a secret).
    """

    method: str
    fenced: tuple[str, ...] = ()
    seconds: float = 0.0
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["fenced"] = list(self.fenced)
        return data


@dataclass(frozen=True)
class LibvirtSecret:
    """A secret a disk's ``<auth>`` refers to by usage (cephx key, CHAP password). ``value`` never leaves
    the host's libvirt secret store; it is excluded from ``repr`` so it cannot reach a log line."""

    usage_type: str  # "ceph" or "iscsi"
    usage_id: str
    value: bytes = field(repr=False)


class Feature(enum.StrEnum):
    """Operations and properties a backend declares in its capability table."""

    CREATE = "create"
    DELETE = "delete"
    GROW = "grow"
    SHRINK = "shrink"
    SNAPSHOT = "snapshot"
    ROLLBACK = "rollback"
    CLONE = "clone"
    FLATTEN = "flatten"
    RENAME = "rename"
    IMPORT_EXPORT = "import_export"
    THIN = "thin"
    REPLICATION = "replication"
    FENCING = "fencing"
    SHARED_ACCESS = "shared_access"
    LIBVIRT_POOL = "libvirt_pool"


@dataclass(frozen=True)
class Support:
    """One cell of a capability table.

    ``supported`` False means the operation raises Unsupported with ``note`` as the reason. ``online``
    says whether it works while a VM has the volume open (None where that question does not apply).
    """

    supported: bool
    note: str = ""
    online: bool | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def yes(note: str = "", *, online: bool | None = None) -> Support:
    return Support(True, note, online)


def no(reason: str) -> Support:
    return Support(False, reason)


@dataclass(frozen=True)
class Capabilities:
    """A backend's capability table: one ``Support`` per ``Feature``, plus a few facts as numbers."""

    backend: str
    features: Mapping[Feature, Support]
    max_nodes: int | None  # how many hosts can reach one volume; None: unbounded in practice
    snapshot_kind: str  # e.g. "rbd snapshot", "qcow2 internal", "none"

    def __post_init__(self) -> None:
        missing = set(Feature) - set(self.features)
        if missing:
            raise TypeError(f"{self.backend}: capability table lacks {sorted(missing)}")

    def supports(self, feature: Feature) -> bool:
        return self.features[feature].supported

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "max_nodes": self.max_nodes,
            "snapshot_kind": self.snapshot_kind,
            "features": {f.value: self.features[f].to_json() for f in Feature},
        }
