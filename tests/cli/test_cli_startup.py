"""The CLI imports a command's module (and a store's backend) only when it runs: every command is still
reachable, and a short command on one store leaves the other backends, rich and libvirt unloaded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hvstore.cli import COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_lazy_command_is_listed_and_has_help(cli, name):
    code, out, _ = cli("--help")
    assert code == 0 and f" {name} " in out
    code, out, _ = cli(name, "--help")
    assert code == 0 and "Usage: hvstore" in out and name in out


def test_unknown_command_is_a_usage_error(cli):
    code, _, err = cli("no-such-command")
    assert code == 2 and "no-such-command" in err


def test_a_short_command_loads_only_what_it_uses(use_config, volumes):
    config = use_config(f'[stores.loc]\ntype = "local"\npath = "{volumes}"\n\n'
                        '[stores.ceph]\ntype = "rbd"\npool = "p"\nconf = "/nonexistent/ceph.conf"\n')
    probe = ("import json, sys\n"
             "from hvstore.cli import main\n"
             "code = main(['--config', sys.argv[1], 'volume', 'list', 'loc', '--json'])\n"
             "print(json.dumps({'code': code, 'modules': sorted(sys.modules)}))\n")
    done = subprocess.run([sys.executable, "-c", probe, str(config)], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 0
    loaded = set(result["modules"])
    assert "hvstore.backends.local" in loaded
    for unused in ("hvstore.backends.rbd", "hvstore.backends.gluster", "hvstore.backends.iscsi",
                   "hvstore.backends.sheepdog", "hvstore.backends.drbd", "rados", "libvirt", "rich",
                   "hvstore.lab", "hvstore.cli.bench", "hvstore.cli.compare"):
        assert unused not in loaded, unused
