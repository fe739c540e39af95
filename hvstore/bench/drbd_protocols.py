"""Synchronous write throughput of DRBD replication protocols A, B and C, measured in one run.

For each protocol one scratch volume is created (full initial sync), then on its Primary node
``dd oflag=direct`` writes ``count`` blocks of 4 KiB and of 1 MiB to /dev/drbdN: an O_DIRECT write returns
when DRBD completes it, i.e. after the local write and, for B, the peer's receipt or, for C, the peer's
disk write. The time is taken inside the node (``/proc/uptime``, 10 ms resolution, hence hundreds of
writes) so the agent's round trip is not counted. Figures only, never pass/fail; ratios are against C.
In the lab both nodes are TCG VMs on one host: the ratios say more than the absolute numbers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from hvstore.backends.drbd import DrbdBackend
from hvstore.tools.drbd_conf import PROTOCOLS

VOLUME_BYTES = 64 << 20
# (label, block size, writes) per pattern
PATTERNS: tuple[tuple[str, int, int], ...] = (("4k", 4096, 400), ("1m", 1 << 20, 32))

_TIMED_DD = ('s=$(cut -d" " -f1 /proc/uptime); dd if=/dev/zero of="$1" bs="$2" count="$3" oflag=direct '
             '2>/dev/null || exit 1; e=$(cut -d" " -f1 /proc/uptime); echo "$s $e"')


@dataclass(frozen=True)
class ProtocolFigure:
    protocol: str
    pattern: str  # "4k" or "1m"
    block_bytes: int
    writes: int
    seconds: float
    mib_per_s: float
    writes_per_s: float
    ratio_vs_c: float | None  # throughput / protocol C's for the same pattern

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_drbd_protocols(backend: DrbdBackend, *, scale: float = 1.0, rounds: int = 3,
                       log: Callable[[str], None] = lambda line: None) -> list[ProtocolFigure]:
    """Measure every protocol with every pattern; ``scale`` multiplies the write counts. The three
    volumes exist side by side and the rounds interleave the protocols, so background load hits all of
    them alike; each figure is the best of ``rounds``."""
    volumes: dict[str, str] = {}
    best: dict[tuple[str, str], float] = {}
    try:
        for protocol in PROTOCOLS:
            name = f"bench-proto-{protocol.lower()}-{uuid.uuid4().hex[:6]}"
            log(f"protocol {protocol}: creating {name} (initial sync)")
            backend.create(name, VOLUME_BYTES, protocol=protocol)
            volumes[protocol] = name
        for round_no in range(rounds):
            for protocol, name in volumes.items():
                primary = backend.primary(name)
                device = backend.info(name).details["device"]
                for label, block, count in PATTERNS:
                    writes = max(1, int(count * scale))
                    done = backend.nodes[primary].run(
                        ["sh", "-c", _TIMED_DD, "bench", device, str(block), str(writes)], timeout_s=600)
                    start, end = (float(x) for x in done.stdout.split())
                    seconds = max(end - start, 0.01)
                    log(f"round {round_no + 1}: protocol {protocol} {label}: {writes} writes in {seconds:.2f} s")
                    best[protocol, label] = min(seconds, best.get((protocol, label), seconds))
    finally:
        for name in volumes.values():
            backend.delete(name)
    raw = [(protocol, label, block, max(1, int(count * scale)), best[protocol, label])
           for protocol in PROTOCOLS for label, block, count in PATTERNS]
    baseline = {label: writes * block / seconds for p, label, block, writes, seconds in raw if p == "C"}
    figures = []
    for protocol, label, block, writes, seconds in raw:
        throughput = writes * block / seconds
        figures.append(ProtocolFigure(
            protocol, label, block, writes, round(seconds, 3), round(throughput / (1 << 20), 3),
            round(writes / seconds, 1), round(throughput / baseline[label], 2) if label in baseline else None))
    return figures
