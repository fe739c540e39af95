"""Workload profiles of ``hvstore bench io`` and ``hvstore compare``: what each one asks of the engine.

The engine (``hvstore.bench.runner``) is fio over NBD into ``qemu-nbd``: QEMU's own block layer, the code
path a VM's disk takes, with a tuned deployment's settings (``cache=none``, ``aio=native`` or ``io_uring``,
``discard=unmap``). fio draws true random offsets (uniform over the whole volume) for the ``rand``
profiles and measures every request's latency, so each figure has p50/p99 as well as a mean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hvstore.errors import InvalidArgument

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Profile:
    name: str
    block_bytes: int
    depth: int  # requests in flight (queue depth)
    write: bool
    random: bool  # uniform random offsets; otherwise sequential

    @property
    def fio_rw(self) -> str:
        """fio's ``--rw`` for this profile."""
        return ("rand" if self.random else "") + ("write" if self.write else "read")

    @property
    def description(self) -> str:
        size = f"{self.block_bytes // MIB} MiB" if self.block_bytes >= MIB else f"{self.block_bytes // KIB} KiB"
        access = "random" if self.random else "sequential"
        return f"{size} {access} {'write' if self.write else 'read'}, QD{self.depth}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "description": self.description}


# Writes first: reads of never-written blocks of a thin volume cost nothing and would flatter every store
# (the runner also writes every volume once in full before the first profile).
PROFILES: tuple[Profile, ...] = (
    Profile("seq-write-1m", MIB, 4, True, False),
    Profile("rand-write-4k-qd1", 4 * KIB, 1, True, True),
    Profile("rand-write-4k-qd32", 4 * KIB, 32, True, True),
    Profile("seq-read-1m", MIB, 4, False, False),
    Profile("rand-read-4k-qd1", 4 * KIB, 1, False, True),
    Profile("rand-read-4k-qd32", 4 * KIB, 32, False, True),
)
QUICK_PROFILES = ("seq-write-1m", "rand-write-4k-qd1", "rand-read-4k-qd32")


def select_profiles(names: list[str] | None) -> list[Profile]:
    """The named profiles in their canonical order (writes before reads), or all of them."""
    if not names:
        return list(PROFILES)
    known = {p.name: p for p in PROFILES}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidArgument(f"unknown profile(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return [p for p in PROFILES if p.name in names]
