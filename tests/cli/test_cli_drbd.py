"""``hvstore drbd ...`` argument handling and errors (no DRBD node needed: nothing gets that far)."""

from __future__ import annotations

import pytest


@pytest.fixture
def config(use_config, volumes, tmp_path):
    return use_config(f'[stores.loc]\ntype = "local"\npath = "{volumes}"\n\n'
                      '[stores.dr]\ntype = "drbd"\nnodes = ["a", "b"]\naddresses = ["10.0.0.1", "10.0.0.2"]\n'
                      f'agent_sockets = ["{tmp_path}/a.sock", "{tmp_path}/b.sock"]\n')


def test_a_non_drbd_store_is_a_user_error(config, cli):
    code, out, err = cli("drbd", "status", "loc/vm1")
    assert code == 2 and out == ""
    assert err.strip() == "hvstore: store 'loc' is a local store, not drbd"


@pytest.mark.parametrize("argv", [["drbd", "protocol", "dr/v", "D"],
                                  ["drbd", "split-brain-policy", "dr/v", "--2pri", "discard-secondary"]])
def test_invalid_values_are_refused_before_any_node_is_asked(config, cli, argv):
    code, _, err = cli(*argv)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_unreachable_nodes_are_one_line_and_exit_1(config, cli):
    code, _, err = cli("drbd", "status", "dr/v")
    assert code == 1
    assert "agent at" in err and "hvstore lab up drbd" in err and len(err.strip().splitlines()) == 1
