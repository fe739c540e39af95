"""The lab: real single-node services (Ceph, glusterd, tgtd, libvirtd, ...) started on this host.

``up``/``down``/``status`` work on a set of services; ``up`` writes ``hvstore.toml`` in the lab directory
naming every running service's stores, which is the config hvstore uses when none is given.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hvstore.config import lab_dir
from hvstore.errors import InvalidArgument
from hvstore.lab.registry import DEFAULT, SERVICES
from hvstore.lab.service import Lab, LabService, ServiceStatus

__all__ = ["Lab", "LabController", "ServiceStatus"]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class LabController:
    """Starts, stops and reports the lab's services; one instance per command."""

    def __init__(self, root: Path | None = None) -> None:
        self.lab = Lab(root or lab_dir())

    def services(self, names: Sequence[str] = ()) -> list[LabService]:
        unknown = [n for n in names if n not in SERVICES]
        if unknown:
            raise InvalidArgument(f"unknown lab service {unknown[0]!r} (known: {', '.join(SERVICES)})")
        chosen = names or DEFAULT
        return [SERVICES[n](self.lab) for n in SERVICES if n in chosen]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One lab command at a time: two concurrent ``up`` would bootstrap twice."""
        self.lab.root.mkdir(parents=True, exist_ok=True)
        with open(self.lab.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def up(self, names: Sequence[str] = ()) -> list[ServiceStatus]:
        with self._locked():
            started = []
            for service in self.services(names):
                service.start()
                started.append(service.status())
            self.write_config()
            return started

    def down(self, names: Sequence[str] = ()) -> list[ServiceStatus]:
        with self._locked():
            chosen = self.services(names) if names else [SERVICES[n](self.lab) for n in SERVICES]
            for service in reversed(chosen):
                service.stop()
            self.write_config()
            return [s.status() for s in chosen]

    def destroy(self) -> None:
        """Stop everything and remove the lab directory (all volumes in it are lost)."""
        self.down()
        shutil.rmtree(self.lab.root, ignore_errors=True)

    def status(self, names: Sequence[str] = ()) -> list[ServiceStatus]:
        chosen = self.services(names) if names else [SERVICES[n](self.lab) for n in SERVICES]
        return [s.status() for s in chosen]

    @property
    def config_path(self) -> Path:
        return self.lab.root / "hvstore.toml"

    def write_config(self) -> Path:
        """Write hvstore.toml naming the stores of every service whose state exists (running or not,
        so a stopped store gives 'unreachable' rather than 'unknown store')."""
        lines = ["# Written by 'hvstore lab up'; edits are overwritten. Copy it to keep your own.", ""]
        for name in SERVICES:
            service = SERVICES[name](self.lab)
            if not (self.lab.root / name).exists():
                continue
            for section, tables in (("stores", service.stores()), ("lease_stores", service.lease_stores())):
                for store, table in tables.items():
                    lines.append(f"[{section}.{store}]")
                    lines.extend(f"{key} = {_toml_value(value)}" for key, value in table.items())
                    lines.append("")
        self.config_path.write_text("\n".join(lines))
        return self.config_path
