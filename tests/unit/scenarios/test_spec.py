"""The scenario file format: the shipped files parse, and mistakes fail at load with one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hvstore.scenarios.runner import scenarios_dir
from hvstore.scenarios.spec import ScenarioError, load_scenario, parse_scenario

SHIPPED = sorted(scenarios_dir().glob("*.yaml"))


def _minimal(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"name": "t", "hosts": ["hosta", "hostb"], "volume": {"size": "16M"},
                            "region": {"length": "1M", "chunk": "64K"},
                            "phases": [{"name": "p", "steps": [
                                {"writers": [{"name": "a", "host": "hosta", "pattern": 0xA1}]},
                                {"wait": "writers"}, {"check": {"expect": "damage"}}]}]}
    data.update(changes)
    return data


def test_every_required_scenario_is_shipped() -> None:
    assert {p.stem for p in SHIPPED} >= {"split-brain", "failover", "node-loss", "migration", "provisioning"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenarios_parse(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert scenario.phases and all(phase.steps for phase in scenario.phases)


def test_split_brain_has_a_phase_with_and_without_leases() -> None:
    scenario = load_scenario(scenarios_dir() / "split-brain.yaml")
    leases = [{w.lease for s in phase.steps for w in s.writers} for phase in scenario.phases]
    assert leases == [{False}, {True}]
    assert scenario.uses_lockd
    # the damage of the first phase (a broken qcow2) must not be judged again in the second
    assert [phase.fresh_volume for phase in scenario.phases] == [False, True]


def test_minimal_scenario_values() -> None:
    scenario = parse_scenario(_minimal())
    assert (scenario.volume_bytes, scenario.region_bytes, scenario.chunk_bytes) == (16 << 20, 1 << 20, 64 << 10)
    writer = scenario.phases[0].steps[0].writers[0]
    assert (writer.name, writer.host, writer.pattern, writer.rounds, writer.lease) == ("a", "hosta", 0xA1, 1, False)
    assert not scenario.uses_lockd


@pytest.mark.parametrize(("changes", "message"), [
    ({"colour": "red"}, "unknown key(s) colour"),
    ({"name": ""}, "needs a name"),
    ({"phases": []}, "phases must be a non-empty list"),
    ({"region": {"length": "32M", "chunk": "64K"}}, "must fit the volume"),
    ({"requires": ["magic"]}, "unknown requirement(s) magic"),
    ({"phases": [{"steps": [{"dance": {}}]}]}, "unknown step 'dance'"),
    ({"phases": [{"steps": [{"wait": "writers", "check": {}}]}]}, "exactly one key"),
    ({"phases": [{"steps": [{"writers": [{"name": "a", "host": "hostz", "pattern": 1}]}]}]}, "hostz"),
    ({"phases": [{"steps": [{"writers": [{"name": "a", "host": "hosta", "pattern": 0}]}]}]}, "pattern must be"),
    ({"phases": [{"steps": [{"writers": [{"host": "hosta", "pattern": 1}]}]}]}, "needs 'name'"),
    ({"phases": [{"steps": [{"fault": {"kind": "meteor"}}]}]}, "kind must be one of"),
    ({"phases": [{"steps": [{"fault": {"kind": "freeze"}}]}]}, "freeze needs a host"),
    ({"phases": [{"steps": [{"check": {"expect": "last-writer"}}]}]}, "needs the writer's name"),
    ({"phases": [{"steps": [{"handoff": {"from": "hosta", "to": "hosta"}}]}]}, "two different hosts"),
    ({"phases": [{"steps": [{"wait": {"seconds": -1}}]}]}, "N >= 0"),
    ({"phases": [{"steps": [{"provision": {"size": "lots"}}]}]}, "invalid size"),
    ({"phases": [{"steps": [{"wait": "writers"}], "fresh": True}]}, "unknown key(s) fresh"),
    ({"phases": [{"steps": [{"migration-window": {"action": "ajar"}}]}]}, "action must be open or close"),
    ({"phases": [{"steps": [{"migration-window": {"action": "open", "from": "hosta"}}]}]}, "open needs from and to"),
    ({"phases": [{"steps": [{"migration-window": {"action": "close", "keep": "hostz"}}]}]}, "close needs keep"),
])
def test_mistakes_fail_at_load(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError, match=None) as caught:
        parse_scenario(_minimal(**changes), "x.yaml")
    assert message in str(caught.value)
    assert caught.value.exit_code == 2


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(broken)
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(tmp_path / "missing.yaml")


def test_takeover_and_lease_make_a_scenario_use_lockd() -> None:
    data = _minimal(phases=[{"steps": [{"takeover": {"host": "hostb", "writer": {
        "name": "b", "host": "hostb", "pattern": 2}}}]}])
    scenario = parse_scenario(yaml.safe_load(yaml.safe_dump(data)))
    assert scenario.uses_lockd
    assert scenario.phases[0].steps[0].writers[0].name == "b"


def test_migration_window_steps_open_and_close() -> None:
    scenario = load_scenario(scenarios_dir() / "migration.yaml")
    steps = [(s.kind, s.args) for s in scenario.phases[0].steps]
    assert steps == [("migration-window", {"action": "open", "from": "hosta", "to": "hostb"}),
                     ("handoff", {"from": "hosta", "to": "hostb"}),
                     ("migration-window", {"action": "close", "keep": "hostb"})]
