"""``hvstore compare``: the main job. Capability tables, I/O profiles, lockd figures and every scenario on
every store; a rich table on stdout and report.json, report.md and index.html in ``--report DIR``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from hvstore.cli.context import volume_service
from hvstore.cli.render import JsonOption, console, err_console, print_json, table
from hvstore.report.collect import CompareOptions, Hooks, collect, default_stores


class _ProgressHooks(Hooks):
    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def start(self, part: str, total: int) -> None:
        for task in self.tasks.values():  # the previous part is over
            self.progress.update(task, completed=self.progress.tasks[task].total)
        self.tasks[part] = self.progress.add_task(part, total=max(total, 1))

    def advance(self, part: str, text: str) -> None:
        if part in self.tasks:
            task = self.tasks[part]
            state = self.progress.tasks[task]
            # A part whose steps cannot be counted ahead (lockd bench) stops one short of full until it ends.
            step = 1 if state.total is None or state.completed + 1 < state.total else 0
            self.progress.update(task, advance=step, description=f"{part}: {escape(text)[:60]}")

    def log(self, text: str) -> None:
        self.progress.console.print(f"[dim]{escape(text)}[/dim]", highlight=False)


def write_report(report: dict[str, Any], directory: Path) -> list[Path]:
    from hvstore.report.render import render_html, render_markdown

    directory.mkdir(parents=True, exist_ok=True)
    files = {"report.json": json.dumps(report, indent=2, default=str) + "\n",
             "report.md": render_markdown(report), "index.html": render_html(report)}
    written = []
    for name, text in files.items():
        path = directory / name
        partial = path.with_name(f".{name}.partial")
        partial.write_text(text)
        partial.replace(path)
        written.append(path)
    return written


def compare(stores: list[str] = typer.Option(None, "--stores", "-s", help="store to compare (repeat; default: every "
                                             "store of the config)"),
            report_dir: Path = typer.Option(Path("hvstore-report"), "--report", help="directory for report.json, "
                                            "report.md and index.html"),
            quick: bool = typer.Option(False, "--quick", help="3 profiles at ~1 s each, shorter lockd bench"),
            seconds: float = typer.Option(None, "--seconds", min=0.1, help="seconds per I/O profile "
                                          "(default 3, --quick 1)"),
            scenarios: list[str] = typer.Option(None, "--scenario", help="only this scenario (repeat; default: "
                                                "every scenarios/*.yaml)"),
            as_json: bool = JsonOption) -> None:
    """Run the whole comparison on the stores and write the report (figures only; exit 0 unless it crashed)."""
    with volume_service() as service:
        names = stores or default_stores(service)
        for name in names:
            service.config.store(name)  # an unknown store fails before anything runs
        options = CompareOptions.for_mode(names, quick=quick, seconds=seconds, scenarios=scenarios)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=err_console, transient=False)
        with progress:
            report = collect(service, options, _ProgressHooks(progress))
            for task in progress.tasks:
                progress.update(task.id, completed=task.total)
    written = write_report(report, report_dir)
    if as_json:
        print_json(report)
        return
    _print_summary(report)
    console.print(f"report: {', '.join(str(p) for p in written)} ({report['elapsed_s']} s)")


def _print_summary(report: dict[str, Any]) -> None:
    bench = report["bench"]
    profiles = [p["name"] for p in bench["profiles"]]
    rows = []
    for run in bench["stores"]:
        if run.get("skipped"):
            rows.append([run["store"], f"skipped: {run['skipped']}", *[""] * (len(profiles) - 1)])
            continue
        cells = []
        for name in profiles:
            f = next((f for f in run["figures"] if f["profile"] == name), None)
            cells.append("-" if f is None else f"{f['iops']:,.0f} IOPS x{f['iops_vs_baseline']}\n"
                         f"{f['mean_latency_ms']:.3f} ms")
        rows.append([f"{run['store']} ({run['backend']})", *cells])
    table(f"I/O: {bench['engine']}, ~{bench['seconds_per_profile']} s per profile (x = IOPS / baseline)",
          ["store", *profiles], rows)
    stores = [s["name"] for s in report["stores"]]
    names = list(dict.fromkeys(r["scenario"] for r in report["scenarios"]))
    colours = {"ok": "green", "failed": "red", "error": "red", "not-applicable": "yellow"}
    grid = []
    for name in names:
        row = [name]
        for store in stores:
            r = next((r for r in report["scenarios"] if r["scenario"] == name and r["store"] == store), None)
            if r is None:
                row.append("-")
                continue
            m = r["measurements"]
            figure = next((f"{m[k]} s" for k in ("takeover_s", "handoff_s", "provision_s") if k in m), "")
            row.append(f"[{colours.get(r['status'], 'white')}]{r['status']}[/] {figure}".strip())
        grid.append(row)
    table("scenarios", ["scenario", *stores], grid)
    lockd = report.get("lockd", {})
    if "takeover_s" in lockd:
        console.print(f"lockd ({lockd['store']}): acquire p50 {lockd['acquire_ms']['p50']} ms, takeover "
                      f"{lockd['takeover_s']} s at TTL {lockd['timing']['ttl_s']} s; sanlock: "
                      f"{report['sanlock'].get('takeover_s', report['sanlock'].get('reason'))}")
