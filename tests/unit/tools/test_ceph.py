"""hvstore.tools.ceph: cephx keys, keyrings, ceph.conf, mon_host parsing, QEMU rbd specs (no cluster)."""

from __future__ import annotations

import base64
import struct

import pytest

from hvstore.tools.ceph import (
    conf_value,
    is_cephx_key,
    new_cephx_key,
    parse_mon_host,
    qemu_rbd_spec,
    render_conf,
    render_keyring,
)


def test_new_cephx_key_has_cephs_binary_layout():
    key = new_cephx_key(random_bytes=lambda n: bytes(range(n)), now_s=lambda: 1700000000.25)
    raw = base64.b64decode(key)
    assert struct.unpack("<HIIH", raw[:12]) == (1, 1700000000, 250000000, 16)
    assert raw[12:] == bytes(range(16))
    assert key.startswith("AQ")  # what ceph-authtool --gen-key prints for an AES key
    assert is_cephx_key(key)


def test_new_cephx_keys_differ():
    assert new_cephx_key() != new_cephx_key()


@pytest.mark.parametrize("text", ["", "not base64!", base64.b64encode(b"short").decode(),
                                  base64.b64encode(struct.pack("<HIIH", 2, 0, 0, 16) + bytes(16)).decode()])
def test_is_cephx_key_rejects(text):
    assert not is_cephx_key(text)


def test_render_keyring_with_caps():
    text = render_keyring("client.hostb", "AQABC==", {"mon": "profile rbd", "osd": "profile rbd pool=hv"})
    assert text == ('[client.hostb]\n\tkey = AQABC==\n\tcaps mon = "profile rbd"\n'
                    '\tcaps osd = "profile rbd pool=hv"\n')


def test_render_conf_and_conf_value_round_trip():
    text = render_conf({"global": {"mon_host": "[v2:127.0.0.1:3300,v1:127.0.0.1:6789]", "mon_allow_pool_delete": True},
                        "osd": {"bdev_aio_poll_ms": 20}})
    assert "\tmon_allow_pool_delete = true" in text
    assert conf_value(text, "mon host") == "[v2:127.0.0.1:3300,v1:127.0.0.1:6789]"
    assert conf_value(text, "bdev-aio-poll-ms", section="osd") == "20"
    assert conf_value(text, "bdev_aio_poll_ms") is None  # not in [global]


def test_conf_value_ignores_comments():
    assert conf_value("# mon_host = 1.2.3.4\n[global]\nmon_host = 10.0.0.1 ; the real one\n", "mon_host") == "10.0.0.1"


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1", [("127.0.0.1", 6789)]),
    ("10.0.0.1:6790, 10.0.0.2", [("10.0.0.1", 6790), ("10.0.0.2", 6789)]),
    ("[v2:127.0.0.1:3300,v1:127.0.0.1:6789]", [("127.0.0.1", 6789)]),
    ("[v2:10.0.0.1:3300,v1:10.0.0.1:6789] [v2:10.0.0.2:3300,v1:10.0.0.2:6789]",
     [("10.0.0.1", 6789), ("10.0.0.2", 6789)]),
    ("v2:10.0.0.3:3300", [("10.0.0.3", 6789)]),
    ("v1:10.0.0.4:6789/0;10.0.0.5", [("10.0.0.4", 6789), ("10.0.0.5", 6789)]),
    ("mon1.example.org:6789", [("mon1.example.org", 6789)]),
])
def test_parse_mon_host(value, expected):
    assert parse_mon_host(value) == expected


@pytest.mark.parametrize("value", ["", "  ", "v1:"])
def test_parse_mon_host_rejects_empty_or_garbage(value):
    with pytest.raises(ValueError):
        parse_mon_host(value)


def test_qemu_rbd_spec_plain_and_escaped():
    assert qemu_rbd_spec("hv", "vm1", user="hostb", conf="/etc/ceph/ceph.conf", keyring="/k/b.keyring") == \
        "rbd:hv/vm1:id=hostb:conf=/etc/ceph/ceph.conf:keyring=/k/b.keyring"
    assert qemu_rbd_spec("hv", "vm1", user="admin", conf="/odd:dir/ceph.conf", snapshot="s1") == \
        "rbd:hv/vm1@s1:id=admin:conf=/odd\\:dir/ceph.conf"
