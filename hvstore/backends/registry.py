"""Every backend, by the ``type`` name used in hvstore.toml. One explicit table, no discovery magic."""

from __future__ import annotations

from hvstore.backends.base import Backend
from hvstore.backends.local import LocalBackend
from hvstore.backends.rbd import RbdBackend

# Please keep this at the bottom of the file for visibility.
BACKENDS: dict[str, type[Backend]] = {
    "local": LocalBackend,
    "rbd": RbdBackend,
}
