"""The DRBD backend on the lab's two real DRBD 8.4 node VMs (``hvstore lab up drbd``, booted once per session).

Everything goes through ``DrbdBackend`` the way the CLI does; faults (a lost link, a split brain) are
provoked with plain drbdadm on the nodes through the same agents.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from hvstore.backends.drbd import DrbdBackend
from hvstore.config import load_config
from hvstore.errors import Busy, NotFound
from hvstore.lab import LabController
from hvstore.tools.drbd_conf import SplitBrainPolicy

MiB = 1 << 20
NODE_A, NODE_B = "drbd-a", "drbd-b"


@pytest.fixture(scope="module")
def drbd(lab: LabController) -> Iterator[DrbdBackend]:
    lab.up(["drbd"])
    with load_config(lab.config_path).store("drbd").backend() as backend:
        assert isinstance(backend, DrbdBackend)
        yield backend


@pytest.fixture
def volume(drbd: DrbdBackend) -> Iterator[Callable[..., str]]:
    """Creates volumes (16 MiB by default) and deletes them at the end of the test."""
    made: list[str] = []

    def new(size_bytes: int = 16 * MiB, **options: str) -> str:
        name = f"t-{uuid.uuid4().hex[:8]}"
        made.append(name)
        drbd.create(name, size_bytes, **options)
        return name

    yield new
    for name in made:
        try:
            drbd.delete(name, force=True)
        except NotFound:
            pass


def pattern(seed: str, length: int) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(length)


def write(drbd: DrbdBackend, name: str, offset: int, data: bytes) -> None:
    with drbd.open(name, writable=True) as io:
        io.write(offset, data)


def read(drbd: DrbdBackend, name: str, offset: int, length: int) -> bytes:
    with drbd.open(name) as io:
        return io.read(offset, length)


def wait_for(check: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "DRBD did not reach the expected state"
        time.sleep(0.2)


def roles(drbd: DrbdBackend, name: str) -> dict[str, str]:
    return {node: state.role for node, state in drbd.states(name).items()}


def test_create_syncs_and_data_follows_a_role_switch(drbd: DrbdBackend, volume: Callable[..., str]) -> None:
    name = volume()
    info = drbd.info(name)
    assert info.size_bytes == 16 * MiB
    assert {n: (s["disk"], s["connection"]) for n, s in info.details["nodes"].items()} == {
        NODE_A: ("UpToDate", "Connected"), NODE_B: ("UpToDate", "Connected")}
    assert roles(drbd, name) == {NODE_A: "Primary", NODE_B: "Secondary"}
    data = pattern(name, 3 * MiB)
    write(drbd, name, 5 * MiB, data)

    drbd.switch_primary(name, NODE_B)

    assert roles(drbd, name) == {NODE_A: "Secondary", NODE_B: "Primary"}
    assert drbd.primary(name) == NODE_B
    assert hashlib.sha256(read(drbd, name, 5 * MiB, 3 * MiB)).hexdigest() == hashlib.sha256(data).hexdigest()


def test_second_primary_only_inside_the_migration_window(drbd: DrbdBackend, volume: Callable[..., str]) -> None:
    name = volume()
    with pytest.raises(Busy, match="Multiple primaries not allowed"):
        drbd.set_role(name, NODE_B, "primary")
    assert roles(drbd, name) == {NODE_A: "Primary", NODE_B: "Secondary"}

    drbd.migrate_prepare(name)
    assert roles(drbd, name) == {NODE_A: "Primary", NODE_B: "Primary"}
    assert drbd.info(name).details["allow_two_primaries"] is True

    drbd.migrate_finish(name, keep=NODE_B)
    assert roles(drbd, name) == {NODE_A: "Secondary", NODE_B: "Primary"}
    assert drbd.info(name).details["allow_two_primaries"] is False
    with pytest.raises(Busy, match="Multiple primaries not allowed"):
        drbd.set_role(name, NODE_A, "primary")


def test_migration_window_refused_unless_up_to_date_on_both(drbd: DrbdBackend, volume: Callable[..., str]) -> None:
    name = volume()
    resource = drbd.info(name).details["resource"]
    drbd.nodes[NODE_B].run(["drbdadm", "disconnect", resource])
    try:
        with pytest.raises(Busy, match="UpToDate"):
            drbd.migrate_prepare(name)
        assert roles(drbd, name)[NODE_B] == "Secondary"
    finally:
        drbd.nodes[NODE_B].run(["drbdadm", "connect", resource])


def test_split_brain_is_detected_and_resolved_keeping_the_survivor(drbd: DrbdBackend,
                                                                   volume: Callable[..., str]) -> None:
    name = volume()
    resource = drbd.info(name).details["resource"]
    a, b = drbd.nodes[NODE_A], drbd.nodes[NODE_B]
    for node in (a, b):
        node.run(["drbdadm", "disconnect", resource])
    # Both sides write while cut off; with no Primary left at reconnection and changes on both sides,
    # after-sb-0pri discard-zero-changes cannot decide: an unresolved split brain.
    write(drbd, name, 0, pattern("side-a", MiB))
    a.run(["drbdadm", "secondary", resource])
    b.run(["drbdadm", "primary", resource])
    write(drbd, name, 0, pattern("side-b", MiB))
    b.run(["drbdadm", "secondary", resource])
    for node in (a, b):
        node.run(["drbdadm", "connect", resource])
    wait_for(lambda: all(s.connection == "StandAlone" for s in drbd.states(name).values()))

    info = drbd.info(name)
    assert info.details["split_brain"] is True
    assert any(drbd.split_brain(name).values())

    drbd.resolve_split_brain(name, survivor=NODE_B)

    info = drbd.info(name)
    assert info.details["split_brain"] is False
    assert all(s["disk"] == "UpToDate" and s["connection"] == "Connected" for s in info.details["nodes"].values())
    drbd.set_role(name, NODE_A, "primary")  # read on the victim: it must now hold the survivor's data
    assert read(drbd, name, 0, MiB) == pattern("side-b", MiB)


def test_after_sb_policy_resolves_automatically(drbd: DrbdBackend, volume: Callable[..., str]) -> None:
    name = volume()
    drbd.set_split_brain_policy(name, SplitBrainPolicy(after_sb_0pri="discard-least-changes"))
    assert drbd.info(name).details["after_sb"]["after_sb_0pri"] == "discard-least-changes"
    resource = drbd.info(name).details["resource"]
    a, b = drbd.nodes[NODE_A], drbd.nodes[NODE_B]
    for node in (a, b):
        node.run(["drbdadm", "disconnect", resource])
    write(drbd, name, 0, pattern("many", 2 * MiB))  # A changes 2 MiB, B only 4 KiB elsewhere
    a.run(["drbdadm", "secondary", resource])
    b.run(["drbdadm", "primary", resource])
    write(drbd, name, 8 * MiB, pattern("few", 4096))
    b.run(["drbdadm", "secondary", resource])
    for node in (a, b):
        node.run(["drbdadm", "connect", resource])
    wait_for(lambda: all(s.both_up_to_date for s in drbd.states(name).values()))

    assert drbd.info(name).details["split_brain"] is False
    drbd.set_role(name, NODE_B, "primary")
    assert read(drbd, name, 0, 2 * MiB) == pattern("many", 2 * MiB)  # B discarded its own change
    assert read(drbd, name, 8 * MiB, 4096) == bytes(4096)


def test_fencing_outdates_the_peer_until_it_resyncs(drbd: DrbdBackend, volume: Callable[..., str]) -> None:
    name = volume()
    drbd.fence_peer(name, survivor=NODE_A)
    states = drbd.states(name)
    assert (states[NODE_B].role, states[NODE_B].disk) == ("Secondary", "Outdated")
    with pytest.raises(Busy, match="UpToDate"):
        drbd.set_role(name, NODE_B, "primary")
    write(drbd, name, 0, pattern("after-fence", MiB))  # the survivor keeps writing

    drbd.unfence_peer(name)
    drbd.switch_primary(name, NODE_B)
    assert read(drbd, name, 0, MiB) == pattern("after-fence", MiB)


def test_grow_and_per_volume_protocol(drbd: DrbdBackend, volume: Callable[..., str]) -> None:
    name = volume(protocol="A")
    assert drbd.info(name).details["protocol"] == "A"
    write(drbd, name, 0, pattern(name, MiB))

    grown = drbd.resize(name, 24 * MiB)
    assert grown.size_bytes == 24 * MiB
    drbd.set_protocol(name, "B")

    info = drbd.info(name)
    assert info.details["protocol"] == "B"
    assert all(s["connection"] == "Connected" for s in info.details["nodes"].values())
    assert read(drbd, name, 0, MiB) == pattern(name, MiB)
    write(drbd, name, 23 * MiB, pattern("tail", MiB))
    assert read(drbd, name, 23 * MiB, MiB) == pattern("tail", MiB)


def test_list_rename_and_delete(drbd: DrbdBackend, volume: Callable[..., str]) -> None:
    name = volume(size_bytes=8 * MiB)
    assert name in [v.name for v in drbd.list()]
    renamed = drbd.rename(name, name + "-r")
    assert renamed.name == name + "-r" and not drbd.exists(name)
    drbd.delete(name + "-r")
    assert name + "-r" not in [v.name for v in drbd.list()]
