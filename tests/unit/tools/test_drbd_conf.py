"""drbd_conf: resource files round-trip, and the host's drbdadm (9 and 8.4 grammar) accepts them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hvstore.tools import drbd_conf
from hvstore.tools.drbd_conf import Node, Resource, SplitBrainPolicy

NODES = (Node("drbd-a", "10.99.0.1"), Node("drbd-b", "10.99.0.2"))


def resource(**changes: object) -> Resource:
    values: dict[str, object] = {"volume": "vm-1+disk.0", "minor": 3, "nodes": NODES, **changes}
    return Resource(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["A", "B", "C"])
@pytest.mark.parametrize("two_primaries", [False, True])
def test_render_parse_round_trip(protocol: str, two_primaries: bool) -> None:
    original = resource(protocol=protocol, allow_two_primaries=two_primaries,
                        split_brain=SplitBrainPolicy("discard-least-changes", "consensus", "disconnect"))
    text = drbd_conf.render(original)
    assert drbd_conf.parse(text) == original
    assert f"protocol {protocol};" in text
    assert "node-id" not in text  # DRBD 9 would need one per node in every 'on' section; 8.4 rejects it


def test_names_minor_port_and_devices() -> None:
    r = resource(minor=5)
    assert (r.name, r.device, r.backing_device, r.port) == ("hv-5", "/dev/drbd5", "/dev/loop5", 7793)
    text = drbd_conf.render(r)
    assert "resource hv-5 {" in text and "address 10.99.0.2:7793;" in text


@pytest.mark.parametrize("bad", [{"protocol": "D"}, {"minor": -1},
                                 {"nodes": (NODES[0], NODES[0])}])
def test_invalid_resources_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        resource(**bad)


def test_invalid_split_brain_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="after-sb-2pri"):
        SplitBrainPolicy(after_sb_2pri="discard-secondary")


@pytest.mark.parametrize("policy", [
    *(SplitBrainPolicy(after_sb_0pri=v) for v in drbd_conf.AFTER_SB_0PRI),
    *(SplitBrainPolicy(after_sb_1pri=v) for v in drbd_conf.AFTER_SB_1PRI),
    *(SplitBrainPolicy(after_sb_2pri=v) for v in drbd_conf.AFTER_SB_2PRI),
], ids=repr)
def test_every_offered_policy_passes_both_grammars(tmp_path: Path, policy: SplitBrainPolicy) -> None:
    path = tmp_path / "hv-3.res"
    path.write_text(drbd_conf.render(resource(split_brain=policy)))
    for argv in drbd_conf.validate_argvs(str(path)):
        assert subprocess.run(argv, capture_output=True, text=True).returncode == 0, argv


def test_node_named_policies_are_not_offered() -> None:
    # drbdadm 9 rejects 8.4's discard-node-NAME: a file using it would not suit both versions.
    with pytest.raises(ValueError, match="after-sb-0pri"):
        SplitBrainPolicy(after_sb_0pri="discard-node-drbd-b")


def test_parse_refuses_foreign_files() -> None:
    with pytest.raises(ValueError, match="header"):
        drbd_conf.parse("resource r0 {\n}\n")


def test_free_minor_takes_the_lowest_gap() -> None:
    assert drbd_conf.free_minor([]) == 0
    assert drbd_conf.free_minor([0, 1, 3]) == 2
    assert drbd_conf.free_minor([1, 2]) == 0


def test_adm_puts_options_after_the_verb() -> None:
    assert drbd_conf.adm("connect", "hv-1", "--discard-my-data") == ["drbdadm", "connect", "--discard-my-data",
                                                                     "hv-1"]


@pytest.mark.parametrize("protocol", ["A", "C"])
def test_host_drbdadm_accepts_the_file_in_both_grammars(tmp_path: Path, protocol: str) -> None:
    path = tmp_path / "hv-3.res"
    path.write_text(drbd_conf.render(resource(protocol=protocol, allow_two_primaries=True)))
    for argv in drbd_conf.validate_argvs(str(path)):
        done = subprocess.run(argv, capture_output=True, text=True)
        assert done.returncode == 0, (argv, done.stderr)


def test_host_drbdadm_rejects_a_node_id_for_84(tmp_path: Path) -> None:
    path = tmp_path / "bad.res"
    path.write_text(drbd_conf.render(resource()).replace("meta-disk internal;", "meta-disk internal; node-id 1;"))
    argv = drbd_conf.validate_argvs(str(path))[1]
    assert subprocess.run(argv, capture_output=True, text=True).returncode == 10
