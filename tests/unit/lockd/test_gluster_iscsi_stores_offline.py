"""What the gluster and iSCSI lease stores decide without a service: config tables, the iSCSI slot format
and reservation keys, and the IQN scheme the iSCSI backend fences by. The stores themselves run against the
lab's glusterd and tgtd in tests/integration/lockd/test_lease_store_contract.py."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from hvstore.backends.iscsi import IscsiBackend, IscsiConfig
from hvstore.errors import InvalidArgument
from lockd.daemon import load_config
from lockd.errors import ConfigError, ProtocolError
from lockd.stores.gluster import GlusterLeaseStore
from lockd.stores.iscsi import FREE_BIT, SLOT_HEADER, SLOT_MAGIC, IscsiLeaseStore, _decode_slot, _key, _TornSlot


def config(tmp_path: Path, store: str) -> Path:
    path = tmp_path / "lockd.toml"
    path.write_text(f'host_id = "hosta"\n[store]\n{store}')
    return path


def test_store_tables_for_gluster_and_iscsi(tmp_path: Path) -> None:
    gluster = load_config(config(tmp_path, 'type = "gluster"\nvolume = "hvrep3"\n')).open_store()
    assert isinstance(gluster, GlusterLeaseStore) and gluster.describe == "gluster:127.0.0.1:24007/hvrep3/lockd"
    iscsi = load_config(config(tmp_path, 'type = "iscsi"\nportal = "127.0.0.1:3260"\ntarget = "iqn.x:t"\n'
                                         'initiator = "iqn.x:hosta.lockd"\n')).open_store()
    assert isinstance(iscsi, IscsiLeaseStore) and iscsi.describe == "iscsi:127.0.0.1:3260/iqn.x:t/1"
    with pytest.raises(ConfigError, match="iscsi"):
        load_config(config(tmp_path, 'type = "iscsi"\nportal = "127.0.0.1:3260"\n')).open_store()
    with pytest.raises(ConfigError, match="slot_bytes"):
        load_config(config(tmp_path, 'type = "iscsi"\nportal = "p"\ntarget = "t"\ninitiator = "i"\n'
                                     "slot_bytes = 1000\n")).open_store()


def slot(doc: dict[str, object], size: int = 1024) -> bytes:
    body = json.dumps(doc).encode()
    return (SLOT_HEADER.pack(SLOT_MAGIC, zlib.crc32(body), len(body)) + body).ljust(size, b"\0")


def test_slot_round_trip_and_torn_or_foreign_slots() -> None:
    doc = {"kind": "res", "lockspace": "ls", "key": "k", "version": 3, "data": "x"}
    assert _decode_slot(slot(doc)) == doc
    assert _decode_slot(b"\0" * 1024) is None
    raw = bytearray(slot(doc))
    raw[SLOT_HEADER.size + 5] ^= 0xFF  # half of a concurrent rewrite
    with pytest.raises(_TornSlot):
        _decode_slot(bytes(raw))
    with pytest.raises(_TornSlot):
        _decode_slot(b"garbage".ljust(1024, b"\0"))
    body = b"not json"
    with pytest.raises(ProtocolError):
        _decode_slot((SLOT_HEADER.pack(SLOT_MAGIC, zlib.crc32(body), len(body)) + body).ljust(1024, b"\0"))


def test_reservation_keys_are_fresh_nonzero_and_say_busy_or_free() -> None:
    busy = {_key(free=False) for _ in range(100)}
    free = {_key(free=True) for _ in range(100)}
    assert len(busy) == len(free) == 100 and 0 not in busy | free
    assert all(not k & FREE_BIT for k in busy) and all(k & FREE_BIT for k in free)
    assert all(k < 2**64 for k in busy | free)


def test_iscsi_initiator_scheme_maps_vms_to_hosts(tmp_path: Path) -> None:
    backend = IscsiBackend("s", IscsiConfig(directory=str(tmp_path), state_file=str(tmp_path / "state.json")))
    prefix = backend.config.iqn_prefix
    assert backend.initiator_for("hostb", "vm1") == f"{prefix}:hostb.vm1"
    assert backend.initiator_for("hostb") == f"{prefix}:hostb"
    assert backend.initiator_for("iqn.1994-05.com.example:x") == "iqn.1994-05.com.example:x"
    assert backend.host_of(f"{prefix}:hostb.vm1") == "hostb"
    assert backend.host_of(f"{prefix}:hostb") == "hostb"
    assert backend.host_of(backend.config.initiator) is None  # hvstore's own identity belongs to no host
    assert backend.host_of("iqn.2008-11.org.linux-kvm") is None
    with pytest.raises(InvalidArgument, match="cannot contain"):
        backend.initiator_for("host.b", "vm1")
