"""Output: ``--json`` documents and rich tables, one shape for every command."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

JsonOption = typer.Option(False, "--json", help="print one JSON document instead of text")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    out = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*[("-" if v is None else str(v)) for v in row])
    console.print(out)


def info(message: str) -> None:
    """A diagnostic for people (stderr), never part of the result."""
    err_console.print(message, highlight=False)
