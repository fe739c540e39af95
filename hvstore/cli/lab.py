"""``hvstore lab up|down|status|destroy``: the local single-node services (the embedded default)."""

from __future__ import annotations

import time

import typer

from hvstore.cli.render import JsonOption, info, print_json, table
from hvstore.lab import LabController, ServiceStatus
from hvstore.lab.registry import DEFAULT, SERVICES
from hvstore.units import format_size

app = typer.Typer(help=f"Real services on this host: {', '.join(SERVICES)} (default set: {', '.join(DEFAULT)}).",
                  no_args_is_help=True)

ServicesArg = typer.Argument(None, metavar="[SERVICE]...", help=f"any of: {', '.join(SERVICES)}")


def _render(statuses: list[ServiceStatus], as_json: bool, title: str) -> None:
    if as_json:
        print_json([s.to_json() for s in statuses])
        return
    rows = []
    for s in statuses:
        pids = " ".join(str(p.pid) for p in s.processes if p.pid) or "-"
        rss = sum(p.rss_bytes or 0 for p in s.processes)
        state = "[green]healthy[/green]" if s.healthy else ("[yellow]running[/yellow]" if s.running else "stopped")
        rows.append((s.name, state, pids, s.address, format_size(rss) if rss else "-", s.detail))
    table(title, ["service", "state", "pids", "address", "rss", "detail"], rows)


@app.command()
def up(services: list[str] = ServicesArg, as_json: bool = JsonOption) -> None:
    """Start services (idempotent; restarts what crashed) and write the lab's hvstore.toml."""
    controller = LabController()
    start = time.perf_counter()
    statuses = controller.up(services or [])
    _render(statuses, as_json, f"lab up in {time.perf_counter() - start:.1f} s ({controller.lab.root})")
    if not as_json:
        info(f"config: {controller.config_path}")


@app.command()
def down(services: list[str] = ServicesArg, as_json: bool = JsonOption) -> None:
    """Stop services the lab started (by pid); their data stays."""
    _render(LabController().down(services or []), as_json, "lab down")


@app.command()
def status(services: list[str] = ServicesArg, as_json: bool = JsonOption) -> None:
    """Each service's pids, address, health and RSS."""
    controller = LabController()
    _render(controller.status(services or []), as_json, f"lab {controller.lab.root}")


@app.command()
def destroy(yes: bool = typer.Option(False, "--yes", help="confirm: all lab volumes are lost")) -> None:
    """Stop everything and delete the lab directory with all its volumes."""
    if not yes:
        raise typer.BadParameter("this deletes every volume of the lab; pass --yes")
    controller = LabController()
    controller.destroy()
    info(f"removed {controller.lab.root}")
