"""Where a scenario's lockd daemons keep their leases on each kind of lease storage: beside the lab lockd's
(never mixed with them), the lease LUN as configured, a file store in the scratch directory without one."""

from __future__ import annotations

from pathlib import Path

from hvstore.config import parse_config
from hvstore.scenarios.runner import SCENARIO_LEASE_PLACE, scenario_lease_store

# the shapes of the lab's [lease_stores] (hvstore lab up)
LEASE_STORES = {
    "ceph": {"type": "rados", "pool": "hvstore", "conf": "/c.conf", "user": "admin", "namespace": "lockd"},
    "gluster": {"type": "gluster", "volume": "hvlease", "server": "127.0.0.1", "port": 24007, "root": "/lockd"},
    "iscsi": {"type": "iscsi", "portal": "127.0.0.1:3260", "target": "iqn.x:leases", "initiator": "iqn.x:{host}"},
}


def test_scenario_leases_go_beside_the_lab_lockds_or_share_the_lease_lun(tmp_path: Path) -> None:
    stores = {name: {"type": "local", "path": str(tmp_path)} for name in [*LEASE_STORES, "local"]}
    config = parse_config({"stores": stores, "lease_stores": LEASE_STORES}, Path("x.toml"))
    assert scenario_lease_store(config, "ceph", tmp_path) == {**LEASE_STORES["ceph"], "namespace": SCENARIO_LEASE_PLACE}
    assert scenario_lease_store(config, "gluster", tmp_path) == {**LEASE_STORES["gluster"],
                                                                 "root": f"/{SCENARIO_LEASE_PLACE}"}
    assert scenario_lease_store(config, "iscsi", tmp_path) == LEASE_STORES["iscsi"]
    assert scenario_lease_store(config, "local", tmp_path) == {"type": "file", "path": str(tmp_path / "leases")}
    assert (tmp_path / "leases").is_dir()
