"""The config ``lockd bench`` writes for the daemon it measures: valid, private, on the same store."""

from __future__ import annotations

from pathlib import Path

from lockd.bench import daemon_config_text
from lockd.daemon import DaemonConfig, load_config


def test_bench_daemon_config_is_private_and_on_the_same_store(tmp_path: Path) -> None:
    store = {"type": "rados", "conf": "/etc/ceph/ceph.conf", "pool": "lockd", "keyring": 'a "quoted" path',
             "op_timeout_s": 5.0}
    config = DaemonConfig(host_id="hosta", store=store, ttl_s=9.0, renew_interval_s=1.5, margin_s=2.5)
    path = tmp_path / "lockd.toml"
    path.write_text(daemon_config_text(config, host_id="bench-daemon-1", root=tmp_path, lockspace="bench-1"))
    loaded = load_config(path)
    assert loaded.store == store
    assert (loaded.host_id, loaded.ttl_s, loaded.renew_interval_s, loaded.margin_s) == ("bench-daemon-1", 9.0, 1.5,
                                                                                         2.5)
    assert loaded.state_dir == str(tmp_path / "state") and loaded.admin_socket == str(tmp_path / "admin.sock")
    assert loaded.virtlockd_socket == str(tmp_path / "virtlockd.sock")
    assert loaded.lockspaces == ["bench-1"] and loaded.watchdog is False and loaded.fencer == "none"
