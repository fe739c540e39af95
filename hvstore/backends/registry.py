"""Every backend, by the ``type`` name used in hvstore.toml. One explicit table, no discovery magic."""

from __future__ import annotations

from hvstore.backends.base import Backend
from hvstore.backends.drbd import DrbdBackend
from hvstore.backends.gluster import GlusterBackend
from hvstore.backends.iscsi import IscsiBackend
from hvstore.backends.local import LocalBackend
from hvstore.backends.rbd import RbdBackend
from hvstore.backends.sheepdog import SheepdogBackend

# Please keep this at the bottom of the file for visibility.
BACKENDS: dict[str, type[Backend]] = {
    "local": LocalBackend,
    "rbd": RbdBackend,
    "gluster": GlusterBackend,
    "iscsi": IscsiBackend,
    "sheepdog": SheepdogBackend,
    "drbd": DrbdBackend,
}
