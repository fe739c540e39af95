"""Workload profiles of ``hvstore bench io`` and ``hvstore compare``: what each one asks of the engine.

The engine is ``qemu-img bench`` (QEMU's own block layer, the code path a VM's disk takes) with the
settings of a tuned deployment: ``cache=none`` and ``aio=native`` (or ``io_uring``). qemu-img bench has
no random mode: it issues requests at ``offset += step`` modulo the image size. The "random" profiles use
a large step that is an odd multiple of the block size (2053 blocks, about 8 MiB), so consecutive
requests land far apart and wrap around the whole volume in a scattered order: no readahead or
sequential merging helps, which is what random I/O costs. That is a stride, not true randomness; the
profile names say ``rand`` because that is the workload it stands for, the descriptions say how.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hvstore.errors import InvalidArgument

KIB = 1024
MIB = 1024 * KIB
SCATTER_BLOCKS = 2053  # an odd (prime) number of blocks per step: the offsets cycle through all blocks


@dataclass(frozen=True)
class Profile:
    name: str
    block_bytes: int
    depth: int  # requests in flight (queue depth)
    write: bool
    scattered: bool  # step = SCATTER_BLOCKS blocks instead of one block (sequential)
    pilot_requests: int  # a short first run to estimate the request rate, then scaled to the time budget

    @property
    def step_bytes(self) -> int:
        return self.block_bytes * (SCATTER_BLOCKS if self.scattered else 1)

    @property
    def description(self) -> str:
        access = f"scattered (step {self.step_bytes // KIB} KiB)" if self.scattered else "sequential"
        size = f"{self.block_bytes // MIB} MiB" if self.block_bytes >= MIB else f"{self.block_bytes // KIB} KiB"
        return f"{size} {'write' if self.write else 'read'}, {access}, QD{self.depth}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "step_bytes": self.step_bytes, "description": self.description}


# Writes first: reads of never-written blocks of a thin volume cost nothing and would flatter every store.
PROFILES: tuple[Profile, ...] = (
    Profile("seq-write-1m", MIB, 4, True, False, 32),
    Profile("rand-write-4k-qd1", 4 * KIB, 1, True, True, 200),
    Profile("rand-write-4k-qd32", 4 * KIB, 32, True, True, 1000),
    Profile("seq-read-1m", MIB, 4, False, False, 32),
    Profile("rand-read-4k-qd1", 4 * KIB, 1, False, True, 200),
    Profile("rand-read-4k-qd32", 4 * KIB, 32, False, True, 1000),
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
