"""Output: ``--json`` documents and rich tables, one shape for every command.

rich is imported when something is first printed through it (``console``, ``err_console``, ``table``,
``info``), not when a command module is imported: a short command that prints JSON never loads it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

JsonOption = typer.Option(False, "--json", help="print one JSON document instead of text")


@cache
def _console(stderr: bool) -> Console:
    from rich.console import Console

    return Console(stderr=stderr)


def __getattr__(name: str) -> Any:
    """``console`` (stdout) and ``err_console`` (stderr), created on first use."""
    if name == "console":
        return _console(False)
    if name == "err_console":
        return _console(True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.table import Table

    out = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*[("-" if v is None else str(v)) for v in row])
    _console(False).print(out)


def info(message: str) -> None:
    """A diagnostic for people (stderr), never part of the result. Text without markup is written as it
    is (what rich would print; loading rich for the one line a short command prints cost more than the
    command's own work)."""
    if "[" not in message:
        sys.stderr.write(message + "\n")
        return
    _console(True).print(message, highlight=False)
