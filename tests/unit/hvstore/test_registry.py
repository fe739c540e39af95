"""BACKENDS: a table of module and class names that imports a backend on first use."""

from __future__ import annotations

import sys

import pytest

from hvstore.backends.local import LocalBackend
from hvstore.backends.registry import BACKENDS, LazyBackends


def test_lookup_imports_the_named_class_once():
    table = LazyBackends({"files": ("hvstore.backends.local", "LocalBackend")})
    assert "files" in table and "zfs" not in table
    assert list(table) == ["files"] and len(table) == 1
    assert table["files"] is LocalBackend
    assert table["files"] is table["files"]
    assert dict(table.items()) == {"files": LocalBackend}
    with pytest.raises(KeyError):
        table["zfs"]


def test_every_registered_backend_resolves_to_a_class_of_its_module():
    for kind, cls in BACKENDS.items():
        assert cls.__module__ in sys.modules, kind
        assert cls.__name__.endswith("Backend"), kind
