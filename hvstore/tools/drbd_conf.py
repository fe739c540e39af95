"""DRBD resource files and drbdadm argv, as pure functions (text in, data out; nothing runs here).

The files describe a two-node resource in the syntax DRBD 8.4 and DRBD 9 both accept: no ``node-id``, no
``connection`` sections, the replication protocol and split-brain policies inside ``net { }``, and one
``on HOST { device; disk; address; meta-disk; }`` per node. They are validated with the host's
``drbdadm -t FILE sh-nop`` (9.x grammar) and ``/usr/lib/drbd/drbdadm-84 -t FILE sh-nop`` (8.4) before they
reach a node (``validate_argvs``).

The first line of every file is an hvstore header (a comment DRBD ignores) carrying the volume name, so
the nodes' resource files are the backend's only state: DRBD resource names allow fewer characters than
volume names (no ``+``), so the resource is named after its minor (``hv-<minor>``) instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

PROTOCOLS = ("A", "B", "C")
# drbd.conf(5): what each after-split-brain policy may be set to.
# Only values both grammars accept: DRBD 9's drbdadm rejects 8.4's discard-node-NODENAME, and
# discard-local/-remote mean opposite nodes in a file both nodes share.
AFTER_SB_0PRI = ("disconnect", "discard-younger-primary", "discard-older-primary", "discard-zero-changes",
                 "discard-least-changes")
AFTER_SB_1PRI = ("disconnect", "consensus", "violently-as0p", "discard-secondary", "call-pri-lost-after-sb")
AFTER_SB_2PRI = ("disconnect", "violently-as0p", "call-pri-lost-after-sb")
BASE_PORT = 7788
HEADER_PREFIX = "# hvstore "


@dataclass(frozen=True)
class Node:
    name: str  # the node's hostname (``uname -n``), as DRBD matches ``on NAME``
    address: str  # IPv4 on the replication link


@dataclass(frozen=True)
class SplitBrainPolicy:
    """DRBD's automatic recovery policies after a split brain (``after-sb-*pri``). The defaults never
    throw data away on their own: anything DRBD cannot settle without losing writes waits for
    ``resolve_split_brain``."""

    after_sb_0pri: str = "discard-zero-changes"
    after_sb_1pri: str = "discard-secondary"
    after_sb_2pri: str = "disconnect"

    def __post_init__(self) -> None:
        for value, allowed, key in ((self.after_sb_0pri, AFTER_SB_0PRI, "after-sb-0pri"),
                                    (self.after_sb_1pri, AFTER_SB_1PRI, "after-sb-1pri"),
                                    (self.after_sb_2pri, AFTER_SB_2PRI, "after-sb-2pri")):
            if value not in allowed:
                raise ValueError(f"{key} {value!r}: expected one of {', '.join(allowed)}")


@dataclass(frozen=True)
class Resource:
    """One replicated volume: what the resource file says plus hvstore's header."""

    volume: str
    minor: int
    nodes: tuple[Node, Node]
    protocol: str = "C"
    split_brain: SplitBrainPolicy = field(default_factory=SplitBrainPolicy)
    allow_two_primaries: bool = False
    resync_rate: str = "500M"  # fixed rate (c-plan-ahead 0): the dynamic controller crawled at ~3 MB/s

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"replication protocol {self.protocol!r}: expected A, B or C")
        if self.minor < 0 or self.minor > 1_000_000:
            raise ValueError(f"minor {self.minor} out of range")
        if len(self.nodes) != 2 or self.nodes[0].name == self.nodes[1].name:
            raise ValueError("a resource needs exactly two distinct nodes")

    @property
    def name(self) -> str:
        return f"hv-{self.minor}"

    @property
    def device(self) -> str:
        return f"/dev/drbd{self.minor}"

    @property
    def backing_device(self) -> str:
        """The loop device over the volume's backing file, numbered like the DRBD minor so the file stays
        valid after a node reboot."""
        return f"/dev/loop{self.minor}"

    @property
    def port(self) -> int:
        return BASE_PORT + self.minor

    def with_two_primaries(self, allowed: bool) -> Resource:
        return replace(self, allow_two_primaries=allowed)


def render(resource: Resource) -> str:
    """The resource file for both nodes (the same text goes to each)."""
    header = {"volume": resource.volume, "minor": resource.minor, "protocol": resource.protocol}
    sb = resource.split_brain
    lines = [
        HEADER_PREFIX + json.dumps(header, sort_keys=True),
        f"resource {resource.name} {{",
        "    disk {",
        "        c-plan-ahead 0;",
        f"        resync-rate {resource.resync_rate};",
        "    }",
        "    net {",
        f"        protocol {resource.protocol};",
        f"        after-sb-0pri {sb.after_sb_0pri};",
        f"        after-sb-1pri {sb.after_sb_1pri};",
        f"        after-sb-2pri {sb.after_sb_2pri};",
        f"        allow-two-primaries {'yes' if resource.allow_two_primaries else 'no'};",
        "    }",
    ]
    for node in resource.nodes:
        lines += [
            f"    on {node.name} {{",
            f"        device {resource.device} minor {resource.minor};",
            f"        disk {resource.backing_device};",
            f"        address {node.address}:{resource.port};",
            "        meta-disk internal;",
            "    }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


_ON_RE = re.compile(r"^\s*on\s+(\S+)\s*\{(.*?)\}", re.M | re.S)


def parse(text: str) -> Resource:
    """Read back a file ``render`` wrote. Raises ValueError for anything else."""
    first, _, body = text.partition("\n")
    if not first.startswith(HEADER_PREFIX):
        raise ValueError("not an hvstore resource file (no header line)")
    header = json.loads(first.removeprefix(HEADER_PREFIX))

    def setting(key: str) -> str:
        match = re.search(rf"^\s*{re.escape(key)}\s+(\S+);", body, re.M)
        if not match:
            raise ValueError(f"resource file lacks {key}")
        return match.group(1)

    nodes = []
    for name, section in _ON_RE.findall(body):
        address = re.search(r"address\s+([\d.]+):\d+;", section)
        if not address:
            raise ValueError(f"node {name}: no address")
        nodes.append(Node(name, address.group(1)))
    if len(nodes) != 2:
        raise ValueError(f"expected two 'on' sections, found {len(nodes)}")
    return Resource(
        volume=header["volume"], minor=int(header["minor"]), nodes=(nodes[0], nodes[1]),
        protocol=setting("protocol"),
        split_brain=SplitBrainPolicy(setting("after-sb-0pri"), setting("after-sb-1pri"), setting("after-sb-2pri")),
        allow_two_primaries=setting("allow-two-primaries") == "yes", resync_rate=setting("resync-rate"),
    )


def free_minor(used: Sequence[int]) -> int:
    taken = set(used)
    return next(m for m in range(len(taken) + 1) if m not in taken)


# -- argv -----------------------------------------------------------------------------------------------
DRBDADM_84 = "/usr/lib/drbd/drbdadm-84"


def validate_argvs(path: str) -> list[list[str]]:
    """Check a candidate file with the DRBD 9 and the 8.4 grammar (``-c /dev/null``: check this file
    alone, not the host's drbd.conf). Both exit 10 with a clear message on a bad file."""
    return [["drbdadm", "-c", "/dev/null", "-t", path, "sh-nop"],
            [DRBDADM_84, "-c", "/dev/null", "-t", path, "sh-nop"]]


def events_argv(resource: str | None = None) -> list[str]:
    return ["drbdsetup", "events2", "--now", "--statistics", resource or "all"]


def adm(verb: str, resource: str, *extra: str) -> list[str]:
    """``drbdadm VERB [extra...] RESOURCE`` (extra: ``--force``, ``--discard-my-data``...)."""
    return ["drbdadm", verb, *extra, resource]
