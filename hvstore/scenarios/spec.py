"""The declarative scenario files (``scenarios/*.yaml``): parsed and validated here, run by ``runner``.

A scenario names the simulated hosts, the scratch volume and the region its writers write, the lockd
timing (one lockd per host, leases in a file store shared by all hosts of the scenario), and a list of
phases, each a list of steps (``fresh_volume: true`` starts a phase on a new scratch volume, so damage an
earlier phase did is not judged again). A step is a mapping with exactly one key, its kind:

    writers:  [{name, host, pattern, rounds, lease, verify}]   start writers together (lease: via lockd);
              qemu-io on this host, or dd inside the store's nodes where only they reach the volume (DRBD)
    wait:     writers | {seconds: N}                   until every writer exited, or a fixed time
    fault:    {kind: freeze|resume|kill, host} | {kind: kill-replica|restore-replica}
              (kill-replica: a gluster brick, a ceph OSD, the DRBD peer node; restore waits for the resync)
    takeover: {host, writer: {...}, write_timeout_s}   poll lockd until the lease is granted, then write
    handoff:  {from: HOST, to: HOST}                   release on one host, acquire on the other, timed
    migration-window: {action: open, from: HOST, to: HOST} | {action: close, keep: HOST}
              the store's dual-primary window (DRBD): a second writer refused outside it, admitted inside,
              refused again after it closes; stores without one skip the step and say why
    check:    {expect: damage|single-writer|last-writer, writer: NAME}
    provision: {size: 1G}                              the commands from nothing to an attached volume

Everything is checked when the file is loaded, so a typo fails before a volume is created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hvstore.errors import InvalidArgument
from hvstore.units import parse_size

STEP_KINDS = ("writers", "wait", "fault", "takeover", "handoff", "migration-window", "check", "provision")
FAULT_KINDS = ("freeze", "resume", "kill", "kill-replica", "restore-replica")
EXPECTATIONS = ("damage", "single-writer", "last-writer")
REQUIREMENTS = ("replicas", "lockd")


class ScenarioError(InvalidArgument):
    """A scenario file that does not follow the format (exit 2)."""


@dataclass(frozen=True)
class WriterSpec:
    name: str
    host: str
    pattern: int  # the byte every chunk this writer writes is filled with
    rounds: int = 1  # passes over the region
    lease: bool = False  # acquire the volume's lease through the host's lockd before writing
    verify: bool = False  # read every round back: chunks another writer overwrote are counted


@dataclass(frozen=True)
class Step:
    kind: str
    args: dict[str, Any]
    writers: tuple[WriterSpec, ...] = ()


@dataclass(frozen=True)
class Phase:
    name: str
    steps: tuple[Step, ...]
    fresh_volume: bool = False  # start on a new scratch volume (an earlier phase may have damaged it)


@dataclass(frozen=True)
class LockdTiming:
    ttl_s: float = 3.0
    renew_interval_s: float = 0.5
    margin_s: float = 1.0
    io_timeout_s: float = 0.5
    fencer: str = "none"  # "hvstore": a takeover fences the dead host through the store's Backend.fence


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    hosts: tuple[str, ...]
    volume_bytes: int
    region_bytes: int
    chunk_bytes: int
    phases: tuple[Phase, ...]
    lockd: LockdTiming = field(default_factory=LockdTiming)
    requires: tuple[str, ...] = ()
    uses_lockd: bool = False


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScenarioError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _size(value: Any, where: str) -> int:
    try:
        return parse_size(str(value))
    except InvalidArgument as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _writer(data: Any, where: str, hosts: tuple[str, ...]) -> WriterSpec:
    data = _mapping(data, where)
    unknown = set(data) - {"name", "host", "pattern", "rounds", "lease", "verify"}
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        spec = WriterSpec(str(data["name"]), str(data["host"]), int(data["pattern"]), int(data.get("rounds", 1)),
                          bool(data.get("lease", False)), bool(data.get("verify", False)))
    except KeyError as exc:
        raise ScenarioError(f"{where}: a writer needs {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    if spec.host not in hosts:
        raise ScenarioError(f"{where}: host {spec.host!r} is not one of the scenario's hosts ({', '.join(hosts)})")
    if not 1 <= spec.pattern <= 255:
        raise ScenarioError(f"{where}: pattern must be a byte value 1..255 (0 is what an unwritten volume reads)")
    if spec.rounds < 1:
        raise ScenarioError(f"{where}: rounds must be at least 1")
    return spec


def _step(data: Any, where: str, hosts: tuple[str, ...]) -> Step:
    data = _mapping(data, where)
    if len(data) != 1:
        raise ScenarioError(f"{where}: a step has exactly one key, its kind ({', '.join(STEP_KINDS)})")
    kind, value = next(iter(data.items()))
    if kind not in STEP_KINDS:
        raise ScenarioError(f"{where}: unknown step {kind!r} (known: {', '.join(STEP_KINDS)})")
    where = f"{where} ({kind})"
    if kind == "writers":
        if not isinstance(value, list) or not value:
            raise ScenarioError(f"{where}: a non-empty list of writers")
        writers = tuple(_writer(w, f"{where}[{i}]", hosts) for i, w in enumerate(value))
        return Step(kind, {}, writers)
    if kind == "wait":
        if value == "writers":
            return Step(kind, {"writers": True})
        seconds = _mapping(value, where).get("seconds")
        if not isinstance(seconds, int | float) or seconds < 0:
            raise ScenarioError(f"{where}: 'writers' or {{seconds: N}} with N >= 0")
        return Step(kind, {"seconds": float(seconds)})
    args = _mapping(value if value is not None else {}, where)
    if kind == "fault":
        if args.get("kind") not in FAULT_KINDS:
            raise ScenarioError(f"{where}: kind must be one of {', '.join(FAULT_KINDS)}")
        if args["kind"] in ("freeze", "resume", "kill") and args.get("host") not in hosts:
            raise ScenarioError(f"{where}: {args['kind']} needs a host of the scenario ({', '.join(hosts)})")
    elif kind == "takeover":
        if args.get("host") not in hosts:
            raise ScenarioError(f"{where}: needs a host of the scenario")
        writer = _writer(args.get("writer"), f"{where} writer", hosts)
        timeout = args.get("write_timeout_s", 60)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ScenarioError(f"{where}: write_timeout_s must be a positive number of seconds")
        return Step(kind, {"host": args["host"], "write_timeout_s": float(timeout)}, (writer,))
    elif kind == "handoff":
        if args.get("from") not in hosts or args.get("to") not in hosts or args["from"] == args["to"]:
            raise ScenarioError(f"{where}: from and to must be two different hosts of the scenario")
    elif kind == "migration-window":
        action = args.get("action")
        if action == "open":
            if args.get("from") not in hosts or args.get("to") not in hosts or args["from"] == args["to"]:
                raise ScenarioError(f"{where}: open needs from and to, two different hosts of the scenario")
            args = {"action": action, "from": args["from"], "to": args["to"]}
        elif action == "close":
            if args.get("keep") not in hosts:
                raise ScenarioError(f"{where}: close needs keep, a host of the scenario")
            args = {"action": action, "keep": args["keep"]}
        else:
            raise ScenarioError(f"{where}: action must be open or close")
    elif kind == "check":
        if args.get("expect") not in EXPECTATIONS:
            raise ScenarioError(f"{where}: expect must be one of {', '.join(EXPECTATIONS)}")
        if args["expect"] == "last-writer" and not args.get("writer"):
            raise ScenarioError(f"{where}: last-writer needs the writer's name")
    elif kind == "provision":
        args = {"size_bytes": _size(args.get("size", "1G"), where)}
    return Step(kind, args)


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    data = _mapping(data, source)
    known = {"name", "description", "hosts", "volume", "region", "lockd", "requires", "phases"}
    unknown = set(data) - known
    if unknown:
        raise ScenarioError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(sorted(known))})")
    if not data.get("name"):
        raise ScenarioError(f"{source}: a scenario needs a name")
    hosts = tuple(str(h) for h in data.get("hosts") or ["hosta"])
    volume = _mapping(data.get("volume") or {}, f"{source}: volume")
    region = _mapping(data.get("region") or {}, f"{source}: region")
    volume_bytes = _size(volume.get("size", "64M"), f"{source}: volume.size")
    region_bytes = _size(region.get("length", "4M"), f"{source}: region.length")
    chunk_bytes = _size(region.get("chunk", "64K"), f"{source}: region.chunk")
    if region_bytes > volume_bytes or region_bytes % chunk_bytes or chunk_bytes % 512:
        raise ScenarioError(f"{source}: region.length must fit the volume and be a multiple of region.chunk "
                            "(itself a multiple of 512)")
    timing_data = _mapping(data.get("lockd") or {}, f"{source}: lockd")
    try:
        timing = LockdTiming(**{k: (str(v) if k == "fencer" else float(v)) for k, v in timing_data.items()})
    except (TypeError, ValueError) as exc:
        raise ScenarioError(f"{source}: lockd: {exc}") from None
    if timing.fencer not in ("none", "hvstore"):
        raise ScenarioError(f"{source}: lockd.fencer must be 'none' or 'hvstore'")
    requires = tuple(str(r) for r in data.get("requires") or [])
    bad = [r for r in requires if r not in REQUIREMENTS]
    if bad:
        raise ScenarioError(f"{source}: unknown requirement(s) {', '.join(bad)} (known: {', '.join(REQUIREMENTS)})")
    phases_data = data.get("phases")
    if not isinstance(phases_data, list) or not phases_data:
        raise ScenarioError(f"{source}: phases must be a non-empty list")
    phases = []
    for index, phase in enumerate(phases_data):
        phase = _mapping(phase, f"{source}: phases[{index}]")
        name = str(phase.get("name") or f"phase-{index + 1}")
        steps = phase.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ScenarioError(f"{source}: phase {name}: steps must be a non-empty list")
        unknown = set(phase) - {"name", "steps", "fresh_volume"}
        if unknown:
            raise ScenarioError(f"{source}: phase {name}: unknown key(s) {', '.join(sorted(unknown))} "
                                "(known: name, steps, fresh_volume)")
        phases.append(Phase(name, tuple(_step(s, f"{source}: phase {name} step {i + 1}", hosts)
                                        for i, s in enumerate(steps)), bool(phase.get("fresh_volume", False))))
    uses_lockd = any(w.lease for p in phases for s in p.steps for w in s.writers) or any(
        s.kind in ("takeover", "handoff") for p in phases for s in p.steps)
    return Scenario(str(data["name"]), str(data.get("description", "")).strip(), hosts, volume_bytes, region_bytes,
                    chunk_bytes, tuple(phases), timing, requires, uses_lockd)


def load_scenario(path: Path) -> Scenario:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    return parse_scenario(data, str(path))
