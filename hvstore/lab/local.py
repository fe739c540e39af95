"""The ``local`` store of the lab: qcow2 files in a directory on this host (the baseline). No daemon."""

from __future__ import annotations

from typing import Any

from hvstore.lab.service import LabService, ServiceStatus


class LocalService(LabService):
    name = "local"
    description = "qcow2 files in a directory (baseline, no daemon)"

    @property
    def process_names(self) -> tuple[str, ...]:
        return ()

    @property
    def address(self) -> str:
        return str(self.lab.root / "local")

    def start(self) -> None:
        (self.lab.root / "local" / "volumes").mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        """Nothing runs; the files stay (``hvstore lab destroy`` removes them)."""

    def health(self) -> tuple[bool, str]:
        path = self.lab.root / "local" / "volumes"
        return (path.is_dir(), "directory ready" if path.is_dir() else "directory missing")

    def status(self) -> ServiceStatus:
        healthy, detail = self.health()
        return ServiceStatus(self.name, self.address, healthy, healthy, detail, ())

    def stores(self) -> dict[str, dict[str, Any]]:
        return {"local": {"type": "local", "path": str(self.lab.root / "local" / "volumes")}}
