"""hvstore's Sheepdog client against the FAKE Sheepdog cluster: id matching, locks, errors."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from hvstore.errors import AlreadyExists, BackendUnavailable, Busy, InvalidArgument, NotFound
from hvstore.protocols.sheepdog import SheepdogClient, SheepdogConnection
from hvstore.protocols.sheepdog_codec import LockState, ObjFields, Opcode, VdiFields, encode_name_tag, inode_oid
from tests.fakes.sheepdog_fake import FakeSheepdogCluster, FakeSheepdogServer

MiB = 1 << 20


@pytest.fixture
def locking() -> Iterator[FakeSheepdogServer]:
    with FakeSheepdogServer(FakeSheepdogCluster(lock_enforced=True)) as server:
        yield server


@pytest.fixture
def client(locking: FakeSheepdogServer) -> Iterator[SheepdogClient]:
    with SheepdogConnection(locking.address) as conn:
        yield SheepdogClient(conn)


def test_answers_are_matched_by_id_not_by_order(client):
    vid = client.create_vdi("vol", 8 * MiB)
    conn = client.conn
    first = conn.submit(Opcode.GET_VDI_INFO, VdiFields(), payload=encode_name_tag("vol"))
    second = conn.submit(Opcode.READ_OBJ, ObjFields(inode_oid(vid)), read_length=16)
    third = conn.submit(Opcode.GET_CLUSTER_DEFAULT, VdiFields())
    rsp3, _ = conn.wait(third)  # asking for the last first keeps the other two answers
    rsp2, data2 = conn.wait(second)
    rsp1, _ = conn.wait(first)
    assert (rsp1.id, rsp2.id, rsp3.id) == (first, second, third)
    assert rsp1.vdi.vdi_id == vid and data2.startswith(b"vol\0") and rsp3.cluster_default.nr_copies == 3


def test_lock_owner_is_the_node_and_release_is_unchecked(client, locking):
    vid = client.create_vdi("vol", MiB)
    assert client.lock_vdi("vol") == vid
    with pytest.raises(Busy, match="cannot lock vol: VDI is locked"):
        client.lock_vdi("vol")  # same node: refused too (the owner is the sheep, not the client)
    [state] = [s for s in client.vdi_states() if s.vid == vid]
    assert state.lock_state == LockState.LOCKED and state.lock_owner == locking.address
    other_node = FakeSheepdogServer(locking.cluster).start()  # a second node of the same cluster
    try:
        with SheepdogConnection(other_node.address) as conn:
            other = SheepdogClient(conn)
            with pytest.raises(Busy):
                other.lock_vdi("vol")
            other.release_vdi("vol", vid)  # anyone may release a normal lock ("dog vdi lock unlock")
            assert other.lock_vdi("vol", shared=True) == vid
        with pytest.raises(Busy):  # a normal lock is refused while a shared holder exists
            client.lock_vdi("vol")
        assert client.lock_vdi("vol", shared=True) == vid  # shared mode admits several nodes
        [state] = [s for s in client.vdi_states() if s.vid == vid]
        assert state.lock_state == LockState.SHARED and state.nr_participants == 2
    finally:
        other_node.stop()


def test_unenforced_lock_is_only_a_lookup():
    with FakeSheepdogServer(FakeSheepdogCluster(lock_enforced=False)) as server, \
            SheepdogConnection(server.address) as conn:
        client = SheepdogClient(conn)
        vid = client.create_vdi("vol", MiB)
        assert client.lock_vdi("vol") == client.lock_vdi("vol") == vid


def test_sheep_errors_map_to_the_error_tree(client):
    client.create_vdi("vol", MiB)
    with pytest.raises(AlreadyExists, match="VDI exists already"):
        client.create_vdi("vol", MiB)
    with pytest.raises(NotFound, match=r"cannot look up nope: no such VDI \(0x08\)"):
        client.lookup("nope")
    with pytest.raises(NotFound, match="no such snapshot tag"):
        client.lookup("vol", tag="nope")
    with pytest.raises(InvalidArgument, match="invalid parameters"):
        client.create_vdi("big", (1 << 20) * 4 * MiB + 1)
    with pytest.raises(InvalidArgument, match="not a snapshot"):
        client.clone_vdi("vol", "", "copy")


def test_no_answer_is_a_timeout_line():
    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        with SheepdogConnection(address, timeout_s=0.2) as conn, \
                pytest.raises(BackendUnavailable, match=r"no answer within 0.2 s"):
            SheepdogClient(conn).cluster_default()


def test_connection_closed_mid_answer():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def half_answer() -> None:
            peer, _ = listener.accept()
            peer.recv(48)
            peer.sendall(b"\0" * 20)  # part of a header, then gone
            peer.close()

        thread = threading.Thread(target=half_answer)
        thread.start()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        with SheepdogConnection(address) as conn, pytest.raises(BackendUnavailable, match="closed the connection"):
            SheepdogClient(conn).cluster_default()
        thread.join()
