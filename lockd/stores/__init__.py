"""Lease stores, one module per store, all behind ``lockd.stores.base.LeaseStore``.

``STORE_TYPES`` names them (``[store] type``) as data; a store's module is imported only when a table asks for
it: the gluster and iscsi stores pull in hvstore's ctypes bindings (libgfapi, libiscsi), about 2 MiB of RSS a
RADOS or file daemon would carry for nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, NamedTuple

from lockd.errors import ConfigError

if TYPE_CHECKING:
    from lockd.stores.base import LeaseStore


class StoreType(NamedTuple):
    module: str
    store_class: str
    config_class: str | None  # None: the table's single ``path`` is the store's argument (file)


STORE_TYPES: dict[str, StoreType] = {
    "file": StoreType("lockd.stores.file", "FileLeaseStore", None),
    "rados": StoreType("lockd.stores.rados", "RadosLeaseStore", "RadosStoreConfig"),
    "gluster": StoreType("lockd.stores.gluster", "GlusterLeaseStore", "GlusterStoreConfig"),
    "iscsi": StoreType("lockd.stores.iscsi", "IscsiLeaseStore", "IscsiStoreConfig"),
}


def open_store(table: dict[str, Any], *, host_id: str) -> LeaseStore:
    """A new, unconnected store from a ``[store]`` table (``type`` plus that type's keys) for host ``host_id``;
    ConfigError on a bad table, naming the key."""
    # "{host}" stands for this host's id, so one table serves every host (e.g. an iSCSI initiator IQN).
    options = {key: value.replace("{host}", host_id) if isinstance(value, str) else value
               for key, value in table.items()}
    kind = options.pop("type", None)
    store_type = STORE_TYPES.get(kind) if isinstance(kind, str) else None
    if store_type is None:
        known = ", ".join(f"'{name}'" for name in STORE_TYPES)
        raise ConfigError(f"[store] type must be one of {known}, not {kind!r}")
    module = importlib.import_module(store_type.module)
    store_class = getattr(module, store_type.store_class)
    try:
        if store_type.config_class is None:
            path = options.pop("path")
            if options:
                raise TypeError(f"unexpected key(s) {', '.join(sorted(options))}")
            return store_class(path)
        return store_class(getattr(module, store_type.config_class)(**options))
    except KeyError as exc:
        raise ConfigError(f"[store] of type {kind!r}: missing key {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[store] of type {kind!r}: {exc}") from None
