"""``hvstore bench ...``: commands that print figures (ratios against a baseline measured in the same run)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Benchmarks: figures, never pass/fail.", no_args_is_help=True)
