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


@app.command("domain-start")
def domain_start(runs: int = typer.Option(9, min=1, help="measured starts per configuration (median reported)"),
                 lock_manager: list[str] = typer.Option(
                     ["none", "lockd", "virtlockd"], "--lock-manager",
                     help="lock managers to compare (repeat the option); the first is the baseline"),
                 as_json: bool = JsonOption) -> None:
    """Domain start time on the lab's libvirtd with lockd vs no lock manager vs virtlockd, in one session.

    Restarts the lab's libvirtd for every lock manager (its running domains stop) and puts the previous
    lock manager back at the end."""
    from hvstore.bench.domain_start import run_domain_start
    from hvstore.lab import LabController

    result = run_domain_start(LabController(), runs=runs, lock_managers=lock_manager,
                              log=lambda line: info(f"[dim]{line}[/dim]"))
    if as_json:
        print_json(result.to_json())
        return
    baseline = lock_manager[0]
    rows = []
    for times in result.times:
        base = result.median(baseline, times.disk)
        delta = f"{(times.median_s - base) * 1000:+.1f}" if base is not None else "-"
        rows.append((times.lock_manager, times.disk, f"{times.median_s * 1000:.1f}", delta,
                     f"{min(times.samples_s) * 1000:.1f}", f"{max(times.samples_s) * 1000:.1f}"))
    table(f"domain start (firmware-only 64 MiB KVM domain, one disk), median of {runs} starts",
          ["lock manager", "disk", "median ms", f"vs {baseline} ms", "min ms", "max ms"], rows)


@app.command("io")
def io(stores: list[str] = typer.Argument(..., metavar="STORE...", help="stores to measure"),
       profiles: list[str] = typer.Option(None, "--profile", "-p", help="profile (repeat; default: all)"),
       seconds: float = typer.Option(3.0, min=0.1, help="seconds per profile (after a short pilot run)"),
       size: str = typer.Option("256M", help="size of each scratch volume"),
       aio: str = typer.Option("native", help="native or io_uring"),
       fio: bool = typer.Option(True, help="also run the profiles through fio where it has an engine (files, rbd)"),
       as_json: bool = JsonOption) -> None:
    """4 KiB scattered and 1 MiB sequential reads/writes through qemu-img bench (cache=none) on each store and
    on a raw file baseline, in one run; prints IOPS, MiB/s, mean latency and ratios vs the baseline."""
    from hvstore.bench.profiles import select_profiles
    from hvstore.bench.runner import run_io_bench
    from hvstore.cli.context import volume_service

    chosen = select_profiles(profiles)
    with volume_service() as service:
        for name in stores:
            service.config.store(name)
        result = run_io_bench(service, stores, chosen, seconds=seconds, size_bytes=parse_size(size), aio=aio,
                              fio=fio, log=lambda line: info(f"[dim]{line}[/dim]"))
    if as_json:
        print_json(result)
        return
    machine = result["machine"]
    rows = []
    for run in result["stores"]:
        if run["skipped"]:
            rows.append((run["store"], "-", f"skipped: {run['skipped']}", "", "", "", ""))
        for f in run["figures"]:
            rows.append((run["store"], f["profile"], f"{f['iops']:,.0f}", f"{f['mib_per_s']:.1f}",
                         f"{f['mean_latency_ms']:.3f}", f["iops_vs_baseline"], f["requests"]))
        for f in run.get("fio", []):
            rows.append((run["store"], f"{f['profile']} (fio {f['engine']})", f"{f['iops']:,.0f}", "",
                         f"{f['mean_latency_ms']:.3f} (p99 {f['p99_latency_ms']})", "", ""))
    table(f"{result['engine']}; {machine['nproc']} CPUs, load {machine['load_average']} -> "
          f"{machine['load_average_after']}, kernel {machine['kernel']}",
          ["store", "profile", "IOPS", "MiB/s", "mean lat ms", "x baseline", "requests"], rows)
