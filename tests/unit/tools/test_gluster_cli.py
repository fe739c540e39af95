"""gluster CLI argv builders and ``--xml`` parsers, on output captured from GlusterFS 10.3 (tests/data/gluster/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvstore.tools.gluster_cli import (
    BRICK_HOST,
    GlusterCliError,
    GlusterdPaths,
    cli_argv,
    fuse_mount_argv,
    glusterd_argv,
    parse_volume_info,
    parse_volume_status,
    volume_create_args,
    volume_set_args,
)

DATA = Path(__file__).parents[2] / "data" / "gluster"


def read(name: str) -> str:
    return (DATA / f"10.3-{name}.xml").read_text()


def test_status_of_all_volumes_healthy() -> None:
    volumes = {v.name: v for v in parse_volume_status(read("volume-status-all"))}
    assert sorted(volumes) == ["hvdist", "hvrep3"]
    assert volumes["hvdist"].bricks_online == 2 and volumes["hvdist"].self_heal_online is None
    rep3 = volumes["hvrep3"]
    assert len(rep3.bricks) == 3 and rep3.bricks_online == 3 and rep3.self_heal_online is True
    assert all(b.host == BRICK_HOST and b.pid is not None for b in rep3.bricks)
    assert [Path(b.path).name for b in rep3.bricks] == ["hvrep3-0", "hvrep3-1", "hvrep3-2"]


def test_status_with_two_bricks_down_reports_them_offline_without_pid() -> None:
    (rep3,) = parse_volume_status(read("volume-status-two-bricks-down"))
    assert rep3.bricks_online == 1
    assert [(b.online, b.pid is None) for b in rep3.bricks] == [(True, False), (False, True), (False, True)]


def test_error_output_raises_with_the_cli_message() -> None:
    with pytest.raises(GlusterCliError, match="Volume nosuch does not exist"):
        parse_volume_status(read("volume-status-unknown-volume"))


def test_non_xml_output_raises() -> None:
    with pytest.raises(GlusterCliError, match="no XML"):
        parse_volume_status("Connection failed. Please check if gluster daemon is operational.\n")


def test_volume_info_types_bricks_and_options() -> None:
    volumes = {v.name: v for v in parse_volume_info(read("volume-info"))}
    assert volumes["hvdist"].type == "Distribute" and volumes["hvdist"].replica_count == 1
    rep3 = volumes["hvrep3"]
    assert (rep3.type, rep3.replica_count, rep3.status) == ("Replicate", 3, "Started")
    assert len(rep3.bricks) == 3 and all(b.startswith(f"{BRICK_HOST}:/") for b in rep3.bricks)
    assert rep3.options["cluster.quorum-type"] == "auto"
    assert rep3.options["cluster.eager-lock"] == "off"


def test_glusterd_keeps_everything_under_its_root(tmp_path: Path) -> None:
    paths = GlusterdPaths(tmp_path)
    argv = glusterd_argv(paths)
    assert argv[:2] == ["glusterd", "-N"]  # foreground, under the lab's reaper
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "--xlator-option"]
    assert all(o.split("=", 1)[1].startswith(str(tmp_path)) for o in options)
    assert {o.split("=", 1)[0] for o in options} == {
        "management.working-directory", "management.run-directory", "management.glusterd-sockfile",
        "management.logging-directory"}
    assert cli_argv(paths, "volume", "list")[-2:] == ["volume", "list"]
    assert f"--glusterd-sock={paths.socket}" in cli_argv(paths)


def test_volume_create_uses_the_accepted_loopback_host_and_force(tmp_path: Path) -> None:
    args = volume_create_args("v", [tmp_path / "b0", tmp_path / "b1", tmp_path / "b2"], replica=3)
    assert args[:5] == ["volume", "create", "v", "replica", "3"]
    assert args[5:8] == [f"{BRICK_HOST}:{tmp_path}/b{i}" for i in range(3)]
    assert args[-1] == "force"
    assert "replica" not in volume_create_args("d", [tmp_path / "b0"])


def test_volume_set_pairs_keys_and_values() -> None:
    assert volume_set_args("v", {"a.b": "on", "c": "off"}) == ["volume", "set", "v", "a.b", "on", "c", "off"]


def test_fuse_mount_turns_kernel_caching_off(tmp_path: Path) -> None:
    argv = fuse_mount_argv("v", tmp_path / "m", tmp_path / "log")
    assert argv[:2] == ["glusterfs", "-N"]
    assert {"--attribute-timeout=0", "--entry-timeout=0", "--negative-timeout=0"} <= set(argv)
    assert argv[-1] == str(tmp_path / "m")
