"""The volume interface every backend implements.

Lifecycle of a backend object (Ganeti's BlockDev, in our words)::

    constructed (stores its name and config, nothing else)
      -> connected (``connect()`` / ``with backend:``; opens cluster handles, mounts)
      -> closed (``close()``)

Lifecycle of a volume: absent -> ``create``/``clone``/``import`` -> existing -> ``open`` (BlockIO, or QEMU
through ``uri``/``disk_xml``) -> ``delete`` -> absent.

Verbs take plain volume names inside this store (the store is the backend object); ``VolumeService`` in
``hvstore.service`` parses ``STORE/NAME``, validates names and sizes and consults the capability table
before it calls a verb, so backends do not repeat those checks. A verb the backend cannot do keeps the
default implementation here, which raises ``Unsupported`` with the reason from the capability table.
"""

from __future__ import annotations

import dataclasses
import types
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Generic, Self, TypeVar

from hvstore.errors import ConfigError, NotFound, Unsupported
from hvstore.model import Capabilities, Feature, FenceResult, LeaseSpec, LibvirtSecret, SnapshotInfo, VolumeInfo


def option(default: Any = dataclasses.MISSING, *, help: str, secret: bool = False) -> Any:
    """A typed config key: ``help`` is shown by ``hvstore store list``, ``secret`` values are never printed."""
    return dataclasses.field(default=default, metadata={"help": help, "secret": secret})


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """Base of every backend's config dataclass (one ``[stores.NAME]`` table in hvstore.toml)."""

    @classmethod
    def from_mapping(cls, store: str, raw: Mapping[str, Any]) -> Self:
        """Build the config from a TOML table; unknown or missing keys and wrong types are ConfigErrors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ConfigError(f"store {store!r}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
        values: dict[str, Any] = {}
        for name, f in fields.items():
            if name in raw:
                values[name] = _coerce(store, name, raw[name], f.type)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"store {store!r}: missing key {name!r} ({f.metadata.get('help', '')})")
        return cls(**values)

    def public(self) -> dict[str, Any]:
        """The config with secret values masked, for display."""
        return {
            f.name: ("********" if f.metadata.get("secret") else getattr(self, f.name))
            for f in dataclasses.fields(self)
        }


def _coerce(store: str, key: str, value: Any, declared: Any) -> Any:
    type_name = declared if isinstance(declared, str) else getattr(declared, "__name__", str(declared))
    checks: dict[str, type | tuple[type, ...]] = {
        "str": str, "int": int, "bool": bool, "float": (int, float), "list[str]": list,
        "str | None": (str, type(None)), "int | None": (int, type(None)),
    }
    expected = checks.get(type_name)
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise ConfigError(f"store {store!r}: key {key!r} must be {type_name}, got {value!r}")
    return tuple(value) if type_name == "list[str]" else value


class BlockIO(ABC):
    """Byte-addressed access to one volume's guest-visible contents (what the VM sees as its disk).

    ``write`` may return before the data is durable (backends pipeline writes); ``flush`` waits for every
    earlier write, makes it durable and raises the first error any of them hit. ``close`` flushes a
    writable handle. Reads and writes beyond ``size()`` are errors.
    """

    @abstractmethod
    def size(self) -> int: ...

    @abstractmethod
    def read(self, offset: int, length: int) -> bytes: ...

    @abstractmethod
    def write(self, offset: int, data: bytes) -> None: ...

    @abstractmethod
    def flush(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def allocated_extents(self) -> Iterator[tuple[int, int]]:
        """(offset, length) ranges that may hold data; everything outside reads as zeros.

        The default claims the whole volume; backends that know their allocation (SEEK_DATA, rbd diff)
        override it so export can skip holes.
        """
        yield (0, self.size())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


C = TypeVar("C", bound=StoreConfig)


class Backend(ABC, Generic[C]):
    """One store of one backend type. Subclasses declare ``kind``, ``Config`` and ``CAPABILITIES``."""

    kind: ClassVar[str]
    Config: ClassVar[type[StoreConfig]]
    CAPABILITIES: ClassVar[Capabilities]

    def __init__(self, store: str, config: C) -> None:
        self.store = store
        self.config = config

    # -- connection ---------------------------------------------------------------------------------
    def connect(self) -> None:
        """Open cluster handles/mounts. Raises BackendUnavailable when the service cannot be reached."""

    def close(self) -> None:
        """Release what ``connect`` opened. Idempotent."""

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        self.close()

    @property
    def capabilities(self) -> Capabilities:
        """This store's capability table (a backend may pick one of several by its config)."""
        return self.CAPABILITIES

    def unsupported(self, feature: Feature, operation: str | None = None) -> Unsupported:
        return Unsupported(self.kind, operation or feature.value, self.capabilities.features[feature].note)

    # -- lifecycle ----------------------------------------------------------------------------------
    @abstractmethod
    def create(self, name: str, size_bytes: int) -> VolumeInfo:
        """Create an empty volume. Raises AlreadyExists."""

    @abstractmethod
    def delete(self, name: str, *, force: bool = False) -> None:
        """Delete a volume and its snapshots. Raises NotFound; Busy if it has clones or open users
        (unless ``force``, where the backend can override)."""

    def resize(self, name: str, size_bytes: int, *, shrink: bool = False) -> VolumeInfo:
        """Change the size; shrinking must be asked for with ``shrink`` (it destroys data)."""
        raise self.unsupported(Feature.GROW, "resize")

    @abstractmethod
    def info(self, name: str) -> VolumeInfo:
        """Raises NotFound."""

    @abstractmethod
    def list(self) -> list[VolumeInfo]:
        """Every volume of this store, including partial ones (``PARTIAL_PREFIX``); sorted by name."""

    def exists(self, name: str) -> bool:
        try:
            self.info(name)
        except NotFound:
            return False
        return True

    def rename(self, name: str, new_name: str) -> VolumeInfo:
        raise self.unsupported(Feature.RENAME)

    # -- snapshots and clones -----------------------------------------------------------------------
    def snapshot(self, name: str, snap: str) -> SnapshotInfo:
        raise self.unsupported(Feature.SNAPSHOT)

    def snapshots(self, name: str) -> list[SnapshotInfo]:
        return list(self.info(name).snapshots)

    def rollback(self, name: str, snap: str) -> None:
        raise self.unsupported(Feature.ROLLBACK)

    def delete_snapshot(self, name: str, snap: str) -> None:
        raise self.unsupported(Feature.SNAPSHOT, "delete a snapshot")

    def clone(self, name: str, snap: str, new_name: str) -> VolumeInfo:
        raise self.unsupported(Feature.CLONE)

    def flatten(self, name: str) -> VolumeInfo:
        raise self.unsupported(Feature.FLATTEN)

    # -- data path ----------------------------------------------------------------------------------
    @abstractmethod
    def open(self, name: str, *, writable: bool = False) -> BlockIO:
        """Guest-visible contents of the volume, for import/export/verify. Raises NotFound."""

    @abstractmethod
    def uri(self, name: str, *, host: str | None = None) -> str:
        """What ``qemu-img``/``qemu-io`` open for this volume (``host``: the cephx/iSCSI identity to use)."""

    @abstractmethod
    def qemu_format(self, name: str) -> str:
        """The format driver QEMU needs on top of ``uri`` (``raw``, ``qcow2``)."""

    @abstractmethod
    def disk_xml(self, name: str, *, target: str = "vda", host: str | None = None) -> str:
        """The libvirt ``<disk>`` element that gives a domain this volume."""

    def grant(self, name: str, *, host: str) -> None:
        """Let ``host``'s QEMU open the volume with the identity ``disk_xml(host=host)`` names (an ACL entry
        where access is per initiator); idempotent. The default does nothing: access is not per host."""

    def libvirt_secrets(self, *, host: str | None = None) -> list[LibvirtSecret]:
        """Secrets ``disk_xml(host=host)`` refers to, for ``hvstore attach`` to define in libvirt."""
        return []

    def lease(self, name: str) -> LeaseSpec:
        """What lockd locks for this volume: one lockspace per store, the volume name as key."""
        return LeaseSpec(lockspace=f"hvstore-{self.store}", key=name)

    def fence(self, name: str, *, dead_host: str, keep_host: str | None = None) -> FenceResult:
        """Cut ``dead_host`` off volume ``name``'s data path (its QEMUs' own storage clients) and return
        once that is in force. Never touches ``keep_host``'s clients (the acquirer: libvirt opens the
        image before it asks for the lease). Idempotent: a second call finds nothing left to cut off.
        lockd calls it before it takes over a dead host's lease."""
        raise self.unsupported(Feature.FENCING, "fence")

    def pool_xml(self) -> str:
        raise self.unsupported(Feature.LIBVIRT_POOL, "describe a libvirt pool")

    def _not_found(self, name: str, snap: str | None = None) -> NotFound:
        what = f"snapshot {self.store}/{name}@{snap}" if snap else f"volume {self.store}/{name}"
        return NotFound(f"{what} does not exist")
