"""DrbdBackend without nodes: size arithmetic (checked against DRBD 8.4.11) and config validation."""

from __future__ import annotations

import pytest

from hvstore.backends.drbd import DrbdBackend, DrbdConfig, backing_bytes, metadata_bytes
from hvstore.errors import InvalidArgument
from hvstore.model import Feature

KiB, MiB = 1 << 10, 1 << 20


def test_internal_metadata_size_matches_drbd() -> None:
    # Seen in the node VM: a 64 MiB backing device gave a DRBD device of 65496 KiB.
    assert 64 * MiB - metadata_bytes(64 * MiB) == 65496 * KiB
    assert metadata_bytes(128 * MiB) == 40 * KiB and metadata_bytes(129 * MiB) == 44 * KiB


@pytest.mark.parametrize("size", [MiB, MiB + 1, 3 * MiB + 512, 1 << 30])
def test_backing_file_holds_the_size_rounded_up_to_4k_plus_metadata(size: int) -> None:
    data = backing_bytes(size) - metadata_bytes(size)
    assert data >= size and data % 4096 == 0 and data - size < 4096


def config(**changes: object) -> DrbdConfig:
    table = {"nodes": ["a", "b"], "addresses": ["10.0.0.1", "10.0.0.2"], "agent_sockets": ["/x/a", "/x/b"],
             **changes}
    return DrbdConfig.from_mapping("drbd", table)


def test_two_nodes_required() -> None:
    with pytest.raises(InvalidArgument, match="two entries"):
        DrbdBackend("drbd", config(nodes=["a"]))


def test_capabilities_are_honest_about_what_drbd_lacks() -> None:
    caps = DrbdBackend("drbd", config()).capabilities
    assert caps.max_nodes == 2
    assert caps.supports(Feature.REPLICATION) and caps.supports(Feature.FENCING)
    assert not caps.supports(Feature.SNAPSHOT) and not caps.supports(Feature.SHRINK)


def test_too_small_volume_is_refused_before_touching_a_node() -> None:
    backend = DrbdBackend("drbd", config())  # its agent sockets do not exist: any node call would fail
    with pytest.raises(InvalidArgument, match="at least 1 MiB"):
        backend.create("v", 64 * KiB)
