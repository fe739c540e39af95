"""Capability rows every backend that keeps volumes as image *files* shares, by image format.

``local`` and ``gluster`` both store a volume as one qcow2 or raw file; what the format allows (internal
snapshots and full-copy clones for qcow2, no snapshots for raw) is the same on both. A backend spreads
these rows into its table and states only what differs (how it grows, how it imports, how thin it is).
"""

from __future__ import annotations

from collections.abc import Mapping

from hvstore.model import Feature, Support, no, yes

QCOW2_FILE_ROWS: Mapping[Feature, Support] = {
    Feature.SHRINK: yes("qemu-img resize --shrink; refused while snapshots exist", online=False),
    Feature.ROLLBACK: yes("qemu-img snapshot -a", online=False),
    Feature.CLONE: yes("full copy of the snapshot (qemu-img convert -l)"),
    Feature.FLATTEN: no("clones are independent full copies; nothing to flatten"),
}

RAW_FILE_ROWS: Mapping[Feature, Support] = {
    Feature.SNAPSHOT: no("raw files have no snapshots; use format = 'qcow2'"),
    Feature.ROLLBACK: no("raw files have no snapshots; use format = 'qcow2'"),
    Feature.CLONE: no("raw files have no snapshots to clone from; use format = 'qcow2'"),
    Feature.FLATTEN: no("raw files have no snapshots to clone from"),
}
