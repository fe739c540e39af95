"""``hvstore scenario run FILE --store STORE``: one declarative failure scenario (``scenarios/*.yaml``) on a store."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from hvstore.cli.context import volume_service
from hvstore.cli.render import JsonOption, console, info, print_json, table

app = typer.Typer(help="Failure scenarios from scenarios/*.yaml: figures and checks, on real services.",
                  no_args_is_help=True)


@app.command("run")
def run_(file: Path = typer.Argument(..., help="scenario YAML (see scenarios/)"),
         store: str = typer.Option(..., "--store", help="store to run it on"),
         as_json: bool = JsonOption) -> None:
    """Run the scenario; exit 1 if a check fails or it errors, 0 if it passes or cannot apply (says why)."""
    from hvstore.scenarios.runner import run_scenario
    from hvstore.scenarios.spec import load_scenario

    scenario = load_scenario(file)
    with volume_service() as service:
        service.config.store(store)
        result = run_scenario(service, scenario, store, log=lambda line: info(f"[dim]{escape(line)}[/dim]"))
    if as_json:
        print_json(result.to_json())
    else:
        colour = {"ok": "green", "not-applicable": "yellow"}.get(result.status, "red")
        console.print(f"[bold]{result.scenario}[/bold] on {result.store} ({result.backend}): "
                      f"[{colour}]{result.status}[/{colour}] in {result.seconds:.1f} s"
                      + (f": {result.reason}" if result.reason else ""))
        rows = [(k, v) for k, v in result.measurements.items() if k != "provision_commands"]
        rows += [(f"check {c['expect']}", f"{'passed' if c['passed'] else 'FAILED'}: {c['meaning']}"
                  + (f"; chunks {c['chunks']}" if c.get("chunks") else "")) for c in result.checks]
        rows += [(f"  {c['step']}", f"{c['seconds']} s: {c['command']}")
                 for c in result.measurements.get("provision_commands", [])]
        rows += [(f"skipped: {s['step']}", s["reason"]) for s in result.skipped_steps]
        if rows:
            table(None, ["measurement", "value"], rows)
    if result.status in ("failed", "error"):
        raise typer.Exit(1)


@app.command("list")
def list_(as_json: bool = JsonOption) -> None:
    """The scenario files shipped in scenarios/."""
    from hvstore.scenarios.runner import scenarios_dir
    from hvstore.scenarios.spec import load_scenario

    found = [load_scenario(p) for p in sorted(scenarios_dir().glob("*.yaml"))]
    if as_json:
        print_json([{"name": s.name, "description": s.description} for s in found])
        return
    table("scenarios", ["name", "description"], [(s.name, s.description) for s in found])
