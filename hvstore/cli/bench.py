"""``hvstore bench ...``: commands that print figures (ratios against a baseline measured in the same run)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import typer

from hvstore.cli.context import app_state
from hvstore.cli.render import JsonOption, info, print_json, table
from hvstore.units import parse_size

app = typer.Typer(help="Benchmarks: figures, never pass/fail.", no_args_is_help=True)


@app.command("import-export")
def import_export(store: str = typer.Argument(..., help="store to measure (rbd: vs rbd import/export; "
                                              "others: vs qemu-img convert)"),
                  size: str = typer.Option("1G", help="size of the test file"),
                  rounds: int = typer.Option(3, min=1, help="rounds; each figure is the best round"),
                  workdir: Path = typer.Option(None, help="where the test files go (default: $TMPDIR or /var/tmp)"),
                  as_json: bool = JsonOption) -> None:
    """hvstore volume import/export vs the store's native tools, in one run; prints ratios."""
    from hvstore.bench.import_export import run_import_export

    config = app_state.config()
    entry = config.store(store)
    base = workdir or Path(os.environ.get("TMPDIR", "/var/tmp"))
    scratch = base / f"hvstore-bench-{uuid.uuid4().hex[:8]}"
    try:
        result = run_import_export(entry, config.path, workdir=scratch, size_bytes=parse_size(size), rounds=rounds,
                                   log=lambda line: info(f"[dim]{line}[/dim]"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if as_json:
        print_json(result.to_json())
        return
    table(f"import/export on {result.store}: {result.size_bytes >> 20} MiB file ({result.data_bytes >> 20} MiB "
          f"data), best of {rounds}; ratio = throughput / {result.baseline}",
          ["tool", "direction", "seconds", "MiB/s", f"x {result.baseline}", "verified", "rounds (s)"],
          [(m.tool, m.direction, f"{m.seconds:.2f}", f"{m.mib_per_s:.0f}", f"{m.ratio_vs_baseline:.2f}",
            "yes" if m.verified else "[red]NO[/red]", " ".join(f"{t:.2f}" for t in m.samples))
           for m in result.measurements])
