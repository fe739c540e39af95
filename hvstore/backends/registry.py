"""Every backend, by the ``type`` name used in hvstore.toml. One explicit table, no discovery magic.

The table names each backend's module and class instead of importing them all: a command that uses one
store would otherwise pay for importing every backend's bindings and protocols at start-up (a large part
of a short CLI call). ``BACKENDS[kind]`` imports that one module on first access; every entry is
resolved by tests/unit/hvstore/test_model.py, so a typo here fails a unit test, not a user.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from hvstore.backends.base import Backend


class LazyBackends(Mapping[str, type[Backend]]):
    """``kind -> Backend class``, importing a backend's module the first time its kind is looked up."""

    def __init__(self, table: dict[str, tuple[str, str]]) -> None:
        self._table = table
        self._loaded: dict[str, type[Backend]] = {}

    def __getitem__(self, kind: str) -> type[Backend]:
        if kind not in self._loaded:
            module, name = self._table[kind]  # KeyError for an unknown kind, as a dict would
            self._loaded[kind] = getattr(importlib.import_module(module), name)
        return self._loaded[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, kind: object) -> bool:
        return kind in self._table


# Please keep this at the bottom of the file for visibility.
BACKENDS: Mapping[str, type[Backend]] = LazyBackends({
    "local": ("hvstore.backends.local", "LocalBackend"),
    "rbd": ("hvstore.backends.rbd", "RbdBackend"),
    "gluster": ("hvstore.backends.gluster", "GlusterBackend"),
    "iscsi": ("hvstore.backends.iscsi", "IscsiBackend"),
    "sheepdog": ("hvstore.backends.sheepdog", "SheepdogBackend"),
    "drbd": ("hvstore.backends.drbd", "DrbdBackend"),
})
