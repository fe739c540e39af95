"""``hvstore store list``, ``hvstore caps`` and ``hvstore demo``."""

from __future__ import annotations

from typing import Any

import typer

from hvstore.cli.context import app_state, volume_service
from hvstore.cli.render import JsonOption, console, info, print_json, table
from hvstore.demo import run_demo
from hvstore.errors import ConfigError
from hvstore.model import Capabilities, Feature, Support

app = typer.Typer(help="The stores named in hvstore.toml.", no_args_is_help=True)


@app.command("list")
def list_(as_json: bool = JsonOption) -> None:
    """List the configured stores (secrets masked)."""
    config = app_state.config()
    entries = list(config.stores.values())
    if as_json:
        print_json([{"name": e.name, "type": e.kind, "config": e.config.public()} for e in entries])
        return
    table(f"stores in {config.path}", ["name", "type", "config"],
          [(e.name, e.kind, ", ".join(f"{k}={v}" for k, v in e.config.public().items())) for e in entries])


def _cell(support: Support) -> str:
    """✓/✗, with 'live' or 'offline' where it matters whether a VM may have the volume open."""
    if not support.supported:
        return "[red]✗[/red]"
    if support.online is None:
        return "[green]✓[/green]"
    return "[green]✓[/green] live" if support.online else "[green]✓[/green] offline"


def _capability_tables(stores: list[str]) -> dict[str, Capabilities]:
    """Capabilities of the named stores, or of every configured store, or of every backend type."""
    from hvstore.backends.registry import BACKENDS

    try:
        config = app_state.config()
    except ConfigError:
        if stores:
            raise
        return {kind: cls.CAPABILITIES for kind, cls in BACKENDS.items()}
    names = stores or list(config.stores)
    return {name: config.store(name).backend().capabilities for name in names}


def caps(stores: list[str] = typer.Argument(None, metavar="[STORE]...", help="default: every store"),
         notes: bool = typer.Option(False, "--notes", help="show the reason/remark of every cell"),
         as_json: bool = JsonOption) -> None:
    """Show the capability tables of stores side by side."""
    tables = _capability_tables(stores or [])
    if as_json:
        print_json({name: c.to_json() for name, c in tables.items()})
        return
    columns = ["feature", *(f"{name}\n({c.backend})" for name, c in tables.items())]
    rows: list[list[Any]] = []
    for feature in Feature:
        row: list[Any] = [feature.value]
        for c in tables.values():
            cell = _cell(c.features[feature])
            row.append(f"{cell}\n[dim]{c.features[feature].note}[/dim]" if notes and c.features[feature].note
                       else cell)
        rows.append(row)
    rows.append(["max nodes", *(c.max_nodes if c.max_nodes is not None else "many" for c in tables.values())])
    rows.append(["snapshots", *(c.snapshot_kind for c in tables.values())])
    table("capabilities", columns, rows)
    if not notes:
        info("✓ supported, ✗ not (--notes says why); live: while a VM has the volume open")


def demo(stores: list[str] = typer.Argument(None, metavar="[STORE]...", help="default: every store"),
         as_json: bool = JsonOption) -> None:
    """The main job until the comparison exists: capability table, then a volume round trip on each store
    (create, write, snapshot, clone, export, verify, delete), timed."""
    with volume_service() as service:
        names = stores or [e.name for e in service.stores()]
        if not as_json:
            caps(names, notes=False, as_json=False)
        results = [run_demo(service, name) for name in names]
    if as_json:
        print_json([r.to_json() for r in results])
        return
    rows = []
    for result in results:
        for step in result.steps:
            rows.append((result.store, step.name, "ok" if step.ok else f"[red]{step.detail}[/red]",
                         f"{step.seconds * 1000:.0f} ms"))
    table("volume round trip", ["store", "step", "result", "time"], rows)
    failed = [r.store for r in results if not r.ok]
    if failed:
        console.print(f"[red]round trip failed on: {', '.join(failed)}[/red]")
        raise typer.Exit(1)
