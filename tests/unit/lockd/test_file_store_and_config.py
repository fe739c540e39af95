"""The file store beyond the shared contract (corruption, cross-process compare-and-swap), the daemon's
config file, the admin protocol's error shapes and the CLI's exit codes."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lockd.daemon import load_config, prometheus_text
from lockd.errors import (
    ConfigError,
    InvalidRequest,
    LeaseHeld,
    LockdError,
    ProtocolError,
    StoreUnavailable,
    VersionConflict,
    first_lockd_error,
    from_wire,
)
from lockd.lease import Resource
from lockd.owners import ProcessRef, process_start_time
from lockd.stores.file import FileLeaseStore

REPO = Path(__file__).resolve().parents[3]


def test_corrupt_records_are_protocol_errors(tmp_path: Path) -> None:
    store = FileLeaseStore(tmp_path)
    store.write_resource("ls", Resource("k"), expected_version=None)
    (tmp_path / "ls" / "heartbeats.json").write_text("{not json")
    with pytest.raises(ProtocolError, match="corrupt"):
        store.read_heartbeats("ls")
    next((tmp_path / "ls" / "resources").iterdir()).write_text("[]")
    with pytest.raises(ProtocolError):
        store.read_resource("ls", "k")


def test_keys_longer_than_a_file_name_work(tmp_path: Path) -> None:
    store = FileLeaseStore(tmp_path)
    long_keys = ["é" * 1000, "é" * 999 + "x"]
    for key in long_keys:
        store.write_resource("ls", Resource(key, token=len(key)), expected_version=None)
    assert [store.read_resource("ls", k).value.token for k in long_keys] == [1000, 1000]
    assert sorted(r.value.key for r in store.list_resources("ls")) == sorted(long_keys)


def test_unusable_directory_is_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreUnavailable):
        FileLeaseStore(tmp_path / "file" / "sub").connect()


def _increment(root: str, rounds: int) -> None:
    store = FileLeaseStore(root)
    done = 0
    while done < rounds:
        current = store.read_resource("ls", "counter")
        assert current is not None
        try:
            store.write_resource("ls", Resource("counter", token=current.value.token + 1),
                                 expected_version=current.version)
            done += 1
        except VersionConflict:
            pass


def test_compare_and_swap_across_processes_loses_nothing(tmp_path: Path) -> None:
    """fcntl locks exclude other processes (what several lockd on one shared directory rely on)."""
    FileLeaseStore(tmp_path).write_resource("ls", Resource("counter"), expected_version=None)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_increment, args=(str(tmp_path), 40)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert FileLeaseStore(tmp_path).read_resource("ls", "counter").value.token == 120


# ------------------------------------------------------------------------------------------- owners

def test_process_identity_includes_start_time() -> None:
    me = ProcessRef.of_pid(os.getpid())
    assert me.alive() and me.start_time == process_start_time(os.getpid())
    assert not ProcessRef(me.pid, me.start_time + 1).alive()  # same pid, another process
    assert ProcessRef.from_json(me.to_json()) == me
    with pytest.raises(InvalidRequest):
        ProcessRef.of_pid(0)
    with pytest.raises(ProtocolError):
        ProcessRef.from_json(["1", 2])


# ------------------------------------------------------------------------------------------- config

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lockd.toml"
    path.write_text(text)
    return path


def test_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'host_id = "hosta"\n[store]\ntype = "file"\npath = "/tmp/x"\n'))
    assert config.manager_config().timing.ttl_s == 8.0
    assert isinstance(config.open_store(), FileLeaseStore)
    assert load_config(tmp_path / "lockd.toml", host_id="hostb").host_id == "hostb"


@pytest.mark.parametrize(("text", "message"), [
    ('[store]\ntype = "file"\npath = "/x"\n', "host_id"),
    ('host_id = "a"\nbogus = 1\n[store]\ntype = "file"\npath = "/x"\n', "unknown key"),
    ('host_id = "a/b"\n[store]\ntype = "file"\npath = "/x"\n', "invalid host id"),
    ('host_id = "a"\nttl_s = 3.0\n[store]\ntype = "file"\npath = "/x"\n', "renew_interval_s"),
    ('host_id = "a"\nttl_s = 2.0\n[store]\ntype = "file"\npath = "/x"\n', "margin_s"),
    ('host_id = "a"\n[store', "cannot read"),
    ('host_id = "a"\nfencer = "magic"\n[store]\ntype = "file"\npath = "/x"\n', "fencer must be"),
])
def test_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_store_table_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="type must be"):
        load_config(write(tmp_path, 'host_id = "a"\n[store]\ntype = "nfs"\n')).open_store()
    with pytest.raises(ConfigError, match="path"):
        load_config(write(tmp_path, 'host_id = "a"\n[store]\ntype = "file"\n')).open_store()
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, 'host_id = "a"\n[store]\ntype = "rados"\nconf = "/x"\n')).open_store()


def test_host_in_a_store_table_is_this_hosts_id(tmp_path: Path) -> None:
    """One [store] table for every host (as hvstore.toml's [lease_stores] give it): {host} -> host_id."""
    text = ('host_id = "hostb"\n[store]\ntype = "iscsi"\nportal = "127.0.0.1:3260"\n'
            'target = "iqn.2026-11.org.hvstore:iscsi.lockd-leases"\n'
            'initiator = "iqn.2026-11.org.hvstore:{host}.lockd"\n')
    store = load_config(write(tmp_path, text)).open_store()
    assert store.config.initiator == "iqn.2026-11.org.hvstore:hostb.lockd"  # type: ignore[attr-defined]
    file_store = load_config(write(tmp_path, f'host_id = "a"\n[store]\ntype = "file"\npath = "{tmp_path}/{{host}}"\n'))
    assert file_store.open_store().root == tmp_path / "a"  # type: ignore[attr-defined]


def test_missing_config_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config"):
        load_config(tmp_path / "absent.toml")


# ------------------------------------------------------------------------------------------- wire errors

def test_errors_round_trip_through_the_admin_wire() -> None:
    busy = LeaseHeld("lease ls/k is busy", reason="held", retry_after_s=1.5, holders=("hostb/1",))
    back = from_wire(json.loads(json.dumps(busy.to_wire())))
    assert isinstance(back, LeaseHeld) and back.retry_after_s == 1.5 and back.exit_code == 2
    assert isinstance(from_wire(StoreUnavailable("down").to_wire()), StoreUnavailable)
    unknown = from_wire({"type": "Whatever", "message": "m", "exit_code": 2})
    assert isinstance(unknown, LockdError) and unknown.exit_code == 2


def test_first_lockd_error_digs_through_nested_task_group_errors() -> None:
    held = LeaseHeld("lease ls/k is busy", reason="held", retry_after_s=1.0)
    nested = ExceptionGroup("outer", [ValueError("other"), ExceptionGroup("inner", [held])])
    assert first_lockd_error(nested) is held
    assert first_lockd_error(ExceptionGroup("none", [ValueError("x")])) is None


def test_prometheus_text_has_counters_and_gauges() -> None:
    status = {"host": "hosta", "leases": 3, "metrics": {"acquires": 5, "renew_latency_max_s": 0.01,
                                                        "renew_latency_avg_s": None},
              "lockspaces": [{"lockspace": "ls", "since_last_renew_s": 0.2, "self_fence_in_s": 5.8}]}
    text = prometheus_text(status)
    assert '# TYPE lockd_acquires counter\nlockd_acquires{host="hosta"} 5' in text
    assert 'lockd_leases{host="hosta"} 3' in text
    assert 'lockd_self_fence_in_seconds{host="hosta",lockspace="ls"} 5.8' in text
    assert "renew_latency_avg" not in text


# ------------------------------------------------------------------------------------------- CLI

def lockd_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lockd.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=60)


def test_cli_exit_codes(tmp_path: Path) -> None:
    down = lockd_cli("leases", "--socket", str(tmp_path / "none.sock"), "--json")
    assert down.returncode == 1 and down.stderr.startswith("lockd: cannot reach lockd") and down.stdout == ""
    assert down.stderr.count("\n") == 1
    usage = lockd_cli("acquire", "only-one-arg")
    assert usage.returncode == 2
    bad_config = lockd_cli("serve", "--config", str(tmp_path / "absent.toml"))
    assert bad_config.returncode == 2 and "no lockd config" in bad_config.stderr


def test_bench_prints_figures_as_json(tmp_path: Path) -> None:
    config = write(tmp_path, f'host_id = "bench"\nttl_s = 2.0\nrenew_interval_s = 0.2\nmargin_s = 1.0\n'
                             f'io_timeout_s = 0.5\n[store]\ntype = "file"\npath = "{tmp_path / "store"}"\n')
    done = lockd_cli("bench", "--config", str(config), "--rounds", "5", "--leases", "1,20", "--no-takeover",
                     "--daemon-leases", "3,7", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert [row["leases"] for row in figures["renewal"]] == [1, 20]
    daemon = figures["daemon"]  # a real lockd daemon, measured over its admin socket
    assert [row["leases"] for row in daemon["held"]] == [3, 7]
    assert daemon["pid"] > 0 and daemon["pid"] != os.getpid()
    assert daemon["rss_idle_mib"] > 0 and all(row["daemon_rss_mib"] > 0 for row in daemon["held"])
    # the floor under the daemon, measured in the same run, holds no lease logic; lockd's own = RSS - floor
    assert daemon["floor_rss_mib"] > 0 and "lockd.manager" not in daemon["floor_lockd_modules"]
    assert all(row["lockd_own_mib"] == round(row["daemon_rss_mib"] - daemon["floor_rss_mib"], 1)
               for row in daemon["held"])
    assert daemon["acquire_ms"]["p99"] >= daemon["acquire_ms"]["p50"] > 0
    assert figures["acquire_ms"]["p99"] >= figures["acquire_ms"]["p50"] > 0
    assert all(row["store_ops_per_renew"] > 0 for row in figures["renewal"])
