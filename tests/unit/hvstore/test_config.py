from __future__ import annotations

from pathlib import Path

import pytest

from hvstore.config import HvstoreConfig, load_config, parse_config
from hvstore.errors import ConfigError, InvalidArgument, NotFound


def test_parse_local_store(tmp_path):
    config = parse_config({"stores": {"fast": {"type": "local", "path": str(tmp_path), "format": "raw"}}},
                          Path("x.toml"))
    entry = config.store("fast")
    assert entry.kind == "local"
    assert entry.config.format == "raw"
    assert entry.backend().store == "fast"


@pytest.mark.parametrize(("table", "message"), [
    ({"path": "/x"}, "needs a 'type'"),
    ({"type": "zfs", "path": "/x"}, "unknown type 'zfs'"),
    ({"type": "local"}, "missing key 'path'"),
    ({"type": "local", "path": "/x", "colour": "red"}, "unknown key(s) colour"),
    ({"type": "local", "path": 7}, "must be str"),
])
def test_config_errors_are_one_clear_line(table, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config({"stores": {"s": table}}, Path("x.toml")).store("s")


def test_a_store_table_is_validated_when_that_store_is_used(tmp_path):
    config = parse_config({"stores": {"good": {"type": "local", "path": str(tmp_path)},
                                      "typo": {"type": "local", "path": str(tmp_path), "colour": "red"}}},
                          Path("x.toml"))
    assert config.store("good").config.path == str(tmp_path)
    with pytest.raises(ConfigError, match="colour"):
        config.store("typo")
    with pytest.raises(ConfigError, match="colour"):
        config.stores  # noqa: B018 - every store, so the typo shows


def test_unknown_store_names_the_known_ones(tmp_path):
    config = parse_config({"stores": {"a": {"type": "local", "path": str(tmp_path)}}}, Path("x.toml"))
    with pytest.raises(NotFound, match=r"unknown store 'b' in x.toml \(known: a\)"):
        config.store("b")


def test_missing_config_file_gives_next_step(tmp_path, monkeypatch):
    monkeypatch.delenv("HVSTORE_CONFIG", raising=False)
    monkeypatch.setenv("HVSTORE_LAB_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="run 'hvstore lab up'"):
        load_config()
    bad = tmp_path / "bad.toml"
    bad.write_text("[stores\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(bad)


def test_secrets_are_masked():
    from dataclasses import dataclass

    from hvstore.backends.base import StoreConfig, option

    @dataclass(frozen=True)
    class WithSecret(StoreConfig):
        user: str = option(help="u")
        password: str = option(help="p", secret=True)

    cfg = WithSecret.from_mapping("s", {"user": "u", "password": "hunter2"})
    assert cfg.public() == {"user": "u", "password": "********"}


def test_lease_stores_name_where_a_stores_leases_live(tmp_path):
    leases = {"type": "file", "path": str(tmp_path / "leases")}
    config = parse_config({"stores": {"fast": {"type": "local", "path": str(tmp_path)}},
                           "lease_stores": {"fast": leases}}, Path("x.toml"))
    assert config.lease_stores == {"fast": leases}
    assert parse_config({"stores": {}}, Path("x.toml")).lease_stores == {}


@pytest.mark.parametrize(("lease_stores", "message"), [
    ({"fast": {"path": "/x"}}, "each with a 'type'"),
    ({"fast": "rados"}, "each with a 'type'"),
    ({"slow": {"type": "file", "path": "/x"}}, "lease store for unknown store 'slow'"),
])
def test_lease_store_errors_are_one_clear_line(tmp_path, lease_stores, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"stores": {"fast": {"type": "local", "path": str(tmp_path)}}, "lease_stores": lease_stores},
                     Path("x.toml"))


def _with_leases(tmp_path: Path, **lease_stores: dict) -> HvstoreConfig:
    stores = {name: {"type": "local", "path": str(tmp_path)} for name in [*lease_stores, "plain"]}
    return parse_config({"stores": stores, "lease_stores": lease_stores}, Path("x.toml"))


RADOS = {"type": "rados", "pool": "hvstore", "conf": "/c.conf", "user": "admin", "namespace": "lockd"}
GLUSTER = {"type": "gluster", "volume": "hvlease", "server": "127.0.0.1", "root": "/lockd"}
ISCSI = {"type": "iscsi", "portal": "127.0.0.1:3260", "target": "iqn.x:leases", "initiator": "iqn.x:{host}"}


@pytest.mark.parametrize(("table", "key", "moved"), [
    (RADOS, "namespace", "elsewhere"),
    (GLUSTER, "root", "/elsewhere"),  # beside /lockd, not inside it (lockd would list it as a lockspace)
    ({**GLUSTER, "root": "/leases/lockd/"}, "root", "/leases/elsewhere"),
    ({key: value for key, value in GLUSTER.items() if key != "root"}, "root", "/elsewhere"),  # default /lockd
    ({"type": "file", "path": "/var/lib/leases"}, "path", "/var/lib/elsewhere"),
])
def test_a_lease_table_moved_to_a_place_changes_only_the_key_naming_the_place(tmp_path, table, key, moved):
    config = _with_leases(tmp_path, fast=table)
    assert config.lease_store_at("fast", "elsewhere") == {**table, key: moved}
    assert config.lease_stores["fast"] == table  # the configured table stays as it is


def test_a_lease_lun_has_no_place_to_move_to(tmp_path):
    assert _with_leases(tmp_path, fast=ISCSI).lease_store_at("fast", "elsewhere") is None


def test_moving_needs_a_lease_table_and_a_plain_place_name(tmp_path):
    config = _with_leases(tmp_path, fast=RADOS)
    with pytest.raises(NotFound, match=r"store 'plain' has no \[lease_stores.plain\] in x.toml \(known: fast\)"):
        config.lease_store_at("plain", "elsewhere")
    with pytest.raises(InvalidArgument, match=r"invalid lease place '\.\./up'"):
        config.lease_store_at("fast", "../up")
