"""A timed volume round trip on one store: what ``hvstore demo`` shows for every store of the lab."""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hvstore.errors import HvstoreError, Unsupported
from hvstore.model import Feature, VolumeRef
from hvstore.service import VolumeService

DEMO_SIZE = 64 << 20
PATTERN_BYTES = 4 << 20


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


@dataclass
class DemoResult:
    store: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {"store": self.store, "ok": self.ok, "steps": [asdict(s) for s in self.steps]}


def run_demo(service: VolumeService, store: str) -> DemoResult:
    """create -> write a pattern -> snapshot -> clone -> export the clone -> compare -> delete all.

    Steps the store's capability table rules out are recorded as skipped with the table's reason; the
    first failing step ends the round trip, and whatever it made is deleted.
    """
    result = DemoResult(store)
    name = f"demo-{os.getpid()}"
    volume, copy = VolumeRef(store, name), VolumeRef(store, f"{name}-clone")
    pattern = hashlib.shake_256(name.encode()).digest(PATTERN_BYTES)
    made: list[VolumeRef] = []

    def step(label: str, action: Callable[[], object]) -> bool:
        start = time.perf_counter()
        try:
            action()
        except Unsupported as exc:
            result.steps.append(Step(label, True, time.perf_counter() - start, f"skipped: {exc.reason}"))
            return False
        except HvstoreError as exc:
            result.steps.append(Step(label, False, time.perf_counter() - start, str(exc)))
            raise
        result.steps.append(Step(label, True, time.perf_counter() - start))
        return True

    def write_pattern() -> None:
        with service.open(volume, writable=True) as io:
            io.write(1 << 20, pattern)

    def verify(ref: VolumeRef) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "export.raw"
            service.export_file(ref, out)
            with out.open("rb") as f:
                f.seek(1 << 20)
                if f.read(PATTERN_BYTES) != pattern:
                    raise HvstoreError(f"{ref}: exported bytes differ from what was written")

    try:
        step("create 64 MiB", lambda: service.create(volume, DEMO_SIZE))
        made.append(volume)
        step("write 4 MiB pattern", write_pattern)
        verify_target = volume
        caps = service.capabilities(store)
        if caps.supports(Feature.SNAPSHOT) and step("snapshot", lambda: service.snapshot(volume, "s1")):
            source = VolumeRef(store, name, "s1")
            if caps.supports(Feature.CLONE) and step("clone", lambda: service.clone(source, copy)):
                made.insert(0, copy)
                verify_target = copy
        step(f"export {verify_target.name} + verify", lambda: verify(verify_target))
    except HvstoreError:
        pass
    finally:
        for ref in made:
            try:
                start = time.perf_counter()
                service.delete(ref, force=True)
                result.steps.append(Step(f"delete {ref.name}", True, time.perf_counter() - start))
            except HvstoreError as exc:
                result.steps.append(Step(f"delete {ref.name}", False, 0.0, str(exc)))
    return result
