"""RbdBackend's config and the strings it gives QEMU and libvirt, without a cluster: the constructor
only stores, and uri/disk_xml/pool_xml need no connection."""

from __future__ import annotations

import base64
from pathlib import Path
from xml.etree import ElementTree

import pytest

from hvstore.backends.rbd import RbdBackend, RbdConfig
from hvstore.config import parse_config
from hvstore.errors import ConfigError, NotFound
from hvstore.lab.ceph import CephService
from hvstore.lab.service import Lab


@pytest.fixture
def lab_table(tmp_path: Path) -> dict:
    return CephService(Lab(tmp_path)).stores()["ceph"]


def test_the_labs_store_table_is_a_valid_rbd_config(lab_table, tmp_path):
    config = parse_config({"stores": {"ceph": lab_table}}, tmp_path / "hvstore.toml")
    entry = config.store("ceph")
    assert entry.kind == "rbd"
    assert isinstance(entry.config, RbdConfig)
    assert entry.config.user == "admin"
    assert entry.config.monitors == ("127.0.0.1:6789",)
    assert entry.config.keyring.endswith("keyrings/ceph.client.admin.keyring")


def test_unknown_key_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown key"):
        RbdConfig.from_mapping("ceph", {"pool": "p", "conf": "/c", "poool": "x"})


def backend(tmp_path: Path, **overrides: object) -> RbdBackend:
    keyrings = tmp_path / "keyrings"
    keyrings.mkdir(exist_ok=True)
    (keyrings / "ceph.client.hostb.keyring").write_text("[client.hostb]\n\tkey = AQ==\n")
    conf = tmp_path / "ceph.conf"
    conf.write_text("[global]\n\tmon_host = [v2:10.0.0.1:3300,v1:10.0.0.1:6789] [v2:10.0.0.2:3300,v1:10.0.0.2:6789]\n")
    values = {"pool": "vms", "conf": str(conf), "keyring": "/k/admin.keyring",
              "host_keyring_dir": str(keyrings), **overrides}
    return RbdBackend("ceph", RbdConfig(**values))


def test_uri_for_hvstore_and_for_a_host_identity(tmp_path):
    rbd = backend(tmp_path)
    assert rbd.uri("vm1") == f"rbd:vms/vm1:id=admin:conf={tmp_path}/ceph.conf:keyring=/k/admin.keyring"
    assert rbd.uri("vm1", host="hostb") == (f"rbd:vms/vm1:id=hostb:conf={tmp_path}/ceph.conf"
                                            f":keyring={tmp_path}/keyrings/ceph.client.hostb.keyring")
    with pytest.raises(NotFound, match="hostz"):
        rbd.uri("vm1", host="hostz")
    assert rbd.qemu_format("vm1") == "raw"


def test_disk_xml_lists_monitors_from_conf_and_names_the_secret(tmp_path):
    disk = ElementTree.fromstring(backend(tmp_path).disk_xml("vm1", target="vdb", host="hostb"))
    assert disk.attrib == {"type": "network", "device": "disk"}
    assert disk.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none"}
    assert disk.find("source").attrib == {"protocol": "rbd", "name": "vms/vm1"}
    assert [h.attrib for h in disk.findall("source/host")] == [
        {"name": "10.0.0.1", "port": "6789"}, {"name": "10.0.0.2", "port": "6789"}]
    assert disk.find("auth").attrib == {"username": "hostb"}
    assert disk.find("auth/secret").attrib == {"type": "ceph", "usage": "hvstore-ceph-hostb"}
    assert disk.find("target").attrib == {"dev": "vdb", "bus": "virtio"}


def test_explicit_monitors_and_secret_usage_win(tmp_path):
    rbd = backend(tmp_path, monitors=("192.0.2.9:6790",), secret_usage="ceph-{user}-key")
    pool = ElementTree.fromstring(rbd.pool_xml())
    assert pool.get("type") == "rbd"
    assert pool.find("source/name").text == "vms"
    assert pool.find("source/host").attrib == {"name": "192.0.2.9", "port": "6790"}
    assert pool.find("source/auth").attrib == {"type": "ceph", "username": "admin"}
    assert pool.find("source/auth/secret").attrib == {"usage": "ceph-admin-key"}


def test_libvirt_secret_is_the_hosts_raw_cephx_key_under_the_usage_disk_xml_names(tmp_path):
    key = bytes(range(16))
    (tmp_path / "keyrings" / "ceph.client.hostc.keyring").parent.mkdir(exist_ok=True)
    (tmp_path / "keyrings" / "ceph.client.hostc.keyring").write_text(
        f"[client.hostc]\n\tkey = {base64.b64encode(key).decode()}\n\tcaps mon = \"profile rbd\"\n")
    rbd = backend(tmp_path)
    [secret] = rbd.libvirt_secrets(host="hostc")
    usage = ElementTree.fromstring(rbd.disk_xml("vm1", host="hostc")).find("auth/secret").get("usage")
    assert (secret.usage_type, secret.usage_id, secret.value) == ("ceph", usage, key)
    assert "value" not in repr(secret)


def test_libvirt_secret_without_a_keyring_uses_the_one_ceph_conf_names(tmp_path):
    rbd = backend(tmp_path, keyring="")
    (tmp_path / "ceph.conf").write_text(f"[global]\nmon_host = 10.0.0.1\n"
                                        f"[client]\nkeyring = {tmp_path}/$name.keyring\n")
    (tmp_path / "client.admin.keyring").write_text("[client.admin]\nkey = AAECAw==\n")
    assert rbd.libvirt_secrets()[0].value == b"\x00\x01\x02\x03"


def test_libvirt_secret_of_a_keyring_without_the_users_key_is_a_config_error(tmp_path):
    (tmp_path / "keyrings" / "ceph.client.hostd.keyring").parent.mkdir(exist_ok=True)
    (tmp_path / "keyrings" / "ceph.client.hostd.keyring").write_text("[client.other]\nkey = AAECAw==\n")
    with pytest.raises(ConfigError, match=r"no key for client\.hostd"):
        backend(tmp_path).libvirt_secrets(host="hostd")
