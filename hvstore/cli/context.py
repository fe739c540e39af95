"""State shared by the CLI's command modules (the global options) and how commands reach the library."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from hvstore.config import HvstoreConfig, load_config
from hvstore.service import VolumeService


@dataclass
class AppState:
    config_path: str | None = None

    def config(self) -> HvstoreConfig:
        return load_config(self.config_path)


app_state = AppState()


@contextmanager
def volume_service() -> Iterator[VolumeService]:
    with VolumeService(app_state.config()) as service:
        yield service
