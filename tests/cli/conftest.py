"""What every CLI test needs: a config of its own (no lab) and a way to run ``hvstore`` in-process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hvstore.cli import main


@pytest.fixture
def volumes(tmp_path: Path) -> Path:
    """A directory for local stores."""
    path = tmp_path / "volumes"
    path.mkdir()
    return path


@pytest.fixture
def use_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """Write ``stores_toml`` as the config every command of this test reads (and a private state dir)."""

    def use(stores_toml: str) -> Path:
        path = tmp_path / "hvstore.toml"
        path.write_text(stores_toml)
        monkeypatch.setenv("HVSTORE_CONFIG", str(path))
        monkeypatch.setenv("HVSTORE_STATE_DIR", str(tmp_path / "state"))
        return path

    return use


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``cli("volume", "list", "loc")`` -> (exit code, stdout, stderr) of ``hvstore`` run in this process."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run
