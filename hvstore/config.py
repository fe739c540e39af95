"""hvstore.toml: named stores, like Proxmox's /etc/pve/storage.cfg.

    [stores.ceph]
    type = "rbd"
    pool = "hvstore"
    conf = "/var/lib/hvstore/lab/ceph/ceph.conf"

Which file: ``--config``, else ``$HVSTORE_CONFIG``, else the lab's ``hvstore.toml`` (the embedded default,
written by ``hvstore lab up``). Loading checks every store's name and type; a store's table is validated
by its backend's ``Config`` dataclass the first time that store is used (``store(name)``; ``stores`` does
all), so a typo fails before anything touches that store, and a command on one store imports only its
own backend (importing all of them was a large part of a short CLI call).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from hvstore.backends.base import Backend, StoreConfig
from hvstore.backends.registry import BACKENDS
from hvstore.errors import ConfigError, NotFound
from hvstore.model import validate_name

DEFAULT_LAB_DIR = Path("/var/lib/hvstore/lab")

# Where a lockd lease store type keeps its leases: the key of its [store] table that names the place, and
# whether that place is a directory. A type missing here has no place to move (iscsi: the leases fill a LUN).
LEASE_PLACE_KEYS: dict[str, tuple[str, bool]] = {
    "rados": ("namespace", False),
    "gluster": ("root", True),  # a directory inside the Gluster volume; lockd's default is /lockd
    "file": ("path", True),
}


def lab_dir() -> Path:
    """Where the lab keeps its state (``$HVSTORE_LAB_DIR`` overrides; tests use their own)."""
    return Path(os.environ.get("HVSTORE_LAB_DIR", DEFAULT_LAB_DIR))


def state_dir() -> Path:
    """Per-host bookkeeping of the CLI (build locks, journal of unfinished builds); ``$HVSTORE_STATE_DIR``."""
    return Path(os.environ.get("HVSTORE_STATE_DIR", "/var/lib/hvstore/state"))


def config_path(explicit: str | Path | None = None) -> Path:
    if explicit:
        return Path(explicit)
    if env := os.environ.get("HVSTORE_CONFIG"):
        return Path(env)
    return lab_dir() / "hvstore.toml"


@dataclass(frozen=True)
class StoreEntry:
    name: str
    kind: str
    config: StoreConfig

    def backend(self) -> Backend[Any]:
        """A new, unconnected backend object for this store."""
        return BACKENDS[self.kind](self.name, self.config)


@dataclass(frozen=True)
class HvstoreConfig:
    path: Path
    tables: dict[str, tuple[str, dict[str, Any]]]  # store name -> (type, its table without "type")
    # store name -> lockd's [store] table for that store's leases ([lease_stores.NAME]; lockd validates it)
    lease_stores: dict[str, dict[str, Any]] = field(default_factory=dict)
    _entries: dict[str, StoreEntry] = field(default_factory=dict, repr=False, compare=False)

    @property
    def stores(self) -> dict[str, StoreEntry]:
        """Every store, validated (raises ConfigError for the first invalid table)."""
        return {name: self.store(name) for name in self.tables}

    def store(self, name: str) -> StoreEntry:
        """The named store, its table validated on first use; NotFound names the known ones."""
        if name not in self.tables:
            known = ", ".join(sorted(self.tables)) or "none"
            raise NotFound(f"unknown store {name!r} in {self.path} (known: {known})")
        if name not in self._entries:
            kind, raw = self.tables[name]
            self._entries[name] = StoreEntry(name, kind, BACKENDS[kind].Config.from_mapping(name, raw))
        return self._entries[name]

    def lease_store_at(self, store: str, place: str) -> dict[str, Any] | None:
        """``store``'s lease table (``[lease_stores.STORE]``) with the leases moved to ``place``, so they never
        mix with those of the lockd the table is written for: RADOS namespace ``place``; for a directory
        (gluster root, file path), the directory ``place`` beside the configured one, never inside it (lockd
        takes every directory inside as a lockspace). None when the type has no place of its own (iscsi):
        the caller decides whether to share it. NotFound when the store has no lease table."""
        validate_name(place, what="lease place")
        if store not in self.lease_stores:
            known = ", ".join(sorted(self.lease_stores)) or "none"
            raise NotFound(f"store {store!r} has no [lease_stores.{store}] in {self.path} (known: {known})")
        table = self.lease_stores[store]
        if table["type"] not in LEASE_PLACE_KEYS:
            return None
        key, is_directory = LEASE_PLACE_KEYS[table["type"]]
        # no key: lockd's default directory (gluster: /lockd), a child of "/" as every default is
        moved = str(PurePosixPath(str(table.get(key, "/"))).parent / place) if is_directory else place
        return {**table, key: moved}


def parse_config(data: dict[str, Any], path: Path) -> HvstoreConfig:
    tables = data.get("stores", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: [stores] must be a table of stores")
    stores: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, table in tables.items():
        validate_name(name, what="store name")
        if not isinstance(table, dict) or "type" not in table:
            raise ConfigError(f"{path}: store {name!r} needs a 'type' ({', '.join(BACKENDS)})")
        raw = dict(table)
        kind = raw.pop("type")
        if kind not in BACKENDS:
            raise ConfigError(f"{path}: store {name!r} has unknown type {kind!r} (known: {', '.join(BACKENDS)})")
        stores[name] = (kind, raw)
    leases = data.get("lease_stores", {})
    if not isinstance(leases, dict) or not all(isinstance(t, dict) and "type" in t for t in leases.values()):
        raise ConfigError(f"{path}: [lease_stores] must be tables of lockd stores, each with a 'type'")
    unknown = sorted(set(leases) - set(stores))
    if unknown:
        raise ConfigError(f"{path}: lease store for unknown store {unknown[0]!r}")
    return HvstoreConfig(path, stores, dict(leases))


def load_config(explicit: str | Path | None = None) -> HvstoreConfig:
    """Load and validate the config; ConfigError with the next step when there is none."""
    path = config_path(explicit)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        hint = "run 'hvstore lab up' or pass --config" if not explicit else "check the path"
        raise ConfigError(f"no config at {path}: {hint}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return parse_config(data, path)
