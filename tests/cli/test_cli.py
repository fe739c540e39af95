"""The CLI on a local store in a temporary directory: JSON shapes, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from xml.etree import ElementTree

import pytest


@pytest.fixture
def config(use_config, volumes, tmp_path):
    return use_config(f'[stores.loc]\ntype = "local"\npath = "{volumes}"\n\n'
                      f'[stores.raw]\ntype = "local"\npath = "{volumes}"\nformat = "raw"\n')


def test_volume_lifecycle_json(config, cli, tmp_path):
    code, out, _ = cli("volume", "create", "loc/vm1", "64M", "--json")
    assert code == 0
    created = json.loads(out)
    assert created == {**created, "store": "loc", "name": "vm1", "size_bytes": 64 << 20, "format": "qcow2"}
    assert set(created) == {"store", "name", "size_bytes", "format", "used_bytes", "parent", "snapshots", "details"}

    code, out, _ = cli("volume", "list", "loc", "--json")
    assert [v["name"] for v in json.loads(out)] == ["vm1"]

    assert cli("volume", "resize", "loc/vm1", "128M", "--json")[0] == 0
    assert cli("volume", "snapshot", "loc/vm1", "s1", "--json")[0] == 0
    code, out, _ = cli("volume", "snapshots", "loc/vm1", "--json")
    assert [s["name"] for s in json.loads(out)] == ["s1"]
    code, out, _ = cli("volume", "clone", "loc/vm1@s1", "loc/vm2", "--json")
    assert code == 0 and json.loads(out)["size_bytes"] == 128 << 20
    code, out, _ = cli("volume", "uri", "loc/vm2", "--json")
    assert json.loads(out)["uri"].endswith("vm2.qcow2")
    code, out, _ = cli("volume", "disk-xml", "loc/vm2", "--target", "vdc")
    disk = ElementTree.fromstring(out)
    assert disk.tag == "disk" and disk.get("type") == "file" and disk.find("target").get("dev") == "vdc"
    target = tmp_path / "out.raw"
    code, out, _ = cli("volume", "export", "loc/vm2", str(target), "-q", "--json")
    assert code == 0 and json.loads(out)["size_bytes"] == 128 << 20 and target.stat().st_size == 128 << 20
    code, out, _ = cli("volume", "delete", "loc/vm2", "--json")
    assert json.loads(out) == {"volume": "loc/vm2", "deleted": True}
    code, out, _ = cli("volume", "delete", "loc/vm2", "--missing-ok", "--json")
    assert json.loads(out) == {"volume": "loc/vm2", "deleted": False}


def test_caps_json_lists_every_store(config, cli):
    code, out, _ = cli("caps", "--json")
    data = json.loads(out)
    assert code == 0 and set(data) == {"loc", "raw"}
    assert data["loc"]["features"]["snapshot"]["supported"] is True
    assert data["raw"]["features"]["snapshot"]["supported"] is False


def test_store_list_json(config, cli):
    code, out, _ = cli("store", "list", "--json")
    assert code == 0
    assert {s["name"]: s["type"] for s in json.loads(out)} == {"loc": "local", "raw": "local"}


@pytest.mark.parametrize(("argv", "message"), [
    (["volume", "create", "nope/vm", "1G"], "unknown store 'nope'"),
    (["volume", "create", "loc/a/b", "1G"], "path separators are not allowed"),
    (["volume", "create", "loc/", "1G"], "invalid volume name: empty"),
    (["volume", "create", "loc/" + "x" * 65, "1G"], "longer than 64"),
    (["volume", "create", "loc/vm", "12Q"], "invalid size '12Q'"),
    (["volume", "create", "loc/vm", "0"], "must be greater than zero"),
    (["volume", "info", "loc/missing"], "volume loc/missing does not exist"),
    (["volume", "snapshot", "raw/r1", "s1"], "local cannot snapshot: raw files have no snapshots"),
    (["volume", "clone", "loc/r1", "loc/r2"], "clone needs a snapshot"),
    (["volume", "import", "/nonexistent.raw", "loc/imp"], "/nonexistent.raw does not exist"),
])
def test_bad_input_is_one_line_exit_2(config, cli, argv, message):
    cli("volume", "create", "raw/r1", "1M")
    code, _, err = cli(*argv)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_existing_volume_exit_2_and_unreachable_store_exit_1(config, cli, tmp_path):
    cli("volume", "create", "loc/vm", "1M")
    code, _, err = cli("volume", "create", "loc/vm", "1M")
    assert code == 2 and "exists already" in err
    code, _, err = cli("--config", str(tmp_path / "none.toml"), "volume", "list", "loc")
    assert code == 2 and "no config at" in err


def test_console_script_prints_no_traceback(config):
    done = subprocess.run([sys.executable, "-m", "hvstore", "volume", "info", "loc/ghost"], capture_output=True,
                          text=True)
    assert done.returncode == 2
    assert done.stderr == "hvstore: volume loc/ghost does not exist\n"
    done = subprocess.run([sys.executable, "-m", "hvstore", "volume", "frobnicate"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
