"""The memory-floor probe (``python -m lockd.floor``) that ``lockd bench`` subtracts from the daemon's RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lockd.errors import ConfigError
from lockd.stores import STORE_TYPES, open_store
from lockd.stores.file import FileLeaseStore


def test_floor_holds_the_store_but_no_lease_logic_and_writes_nothing(tmp_path: Path) -> None:
    request = {"store": {"type": "file", "path": str(tmp_path)}, "host_id": "hosta", "renew_interval_s": 0.05,
               "renewals": 2}
    done = subprocess.run([sys.executable, "-m", "lockd.floor"], input=json.dumps(request), capture_output=True,
                          text=True, timeout=60, check=True)
    result = json.loads(done.stdout)
    assert result["rss_mib"] > 0 and result["threads"] >= 1
    assert "lockd.stores.file" in result["lockd_modules"]
    assert not {"lockd.manager", "lockd.daemon", "lockd.rpc"} & set(result["lockd_modules"])
    assert list(tmp_path.iterdir()) == []  # it only read a lockspace of its own


def test_open_store_substitutes_the_host_and_names_bad_tables(tmp_path: Path) -> None:
    store = open_store({"type": "file", "path": str(tmp_path / "{host}")}, host_id="hostb")
    assert isinstance(store, FileLeaseStore) and store.root == tmp_path / "hostb"
    with pytest.raises(ConfigError, match="missing key 'path'"):
        open_store({"type": "file"}, host_id="a")
    with pytest.raises(ConfigError, match="unexpected key"):
        open_store({"type": "file", "path": str(tmp_path), "pool": "x"}, host_id="a")
    with pytest.raises(ConfigError, match="one of 'file', 'rados', 'gluster', 'iscsi'"):
        open_store({"type": "nfs"}, host_id="a")
    assert set(STORE_TYPES) == {"file", "rados", "gluster", "iscsi"}
