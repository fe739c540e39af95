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
       runtime: float = typer.Option(3.0, "--runtime", "--seconds", min=0.1, help="seconds per profile and round"),
       rounds: int = typer.Option(1, min=1, help="rounds per profile (interleaved; the median round is shown)"),
       size: str = typer.Option("256M", help="size of each scratch volume (written once in full first)"),
       aio: str = typer.Option("native", help="qemu-nbd's aio mode: native or io_uring"),
       cross_check: bool = typer.Option(False, help="also run each profile once through fio's own engine where "
                                        "it has one, without QEMU (libaio on the baseline file, rbd)"),
       as_json: bool = JsonOption) -> None:
    """4 KiB random (QD1, QD32) and 1 MiB sequential reads/writes on each store and on a raw file baseline,
    in one run: fio's nbd engine into qemu-nbd (cache=none, aio=native|io_uring) on the volume's own URI.
    Prints IOPS, MiB/s, mean/p50/p99 latency and ratios vs the baseline, with the machine and its load."""
    from hvstore.bench.profiles import select_profiles
    from hvstore.bench.runner import run_io_bench
    from hvstore.cli.context import volume_service

    chosen = select_profiles(profiles)
    with volume_service() as service:
        for name in stores:
            service.config.store(name)
        result = run_io_bench(service, stores, chosen, seconds=runtime, rounds=rounds, size_bytes=parse_size(size),
                              aio=aio, cross_check=cross_check, log=lambda line: info(f"[dim]{line}[/dim]"))
    if as_json:
        print_json(result)
        return
    machine = result["machine"]
    many = result["rounds"] > 1
    rows = []
    for run in result["stores"]:
        if run["skipped"]:
            rows.append((run["store"], f"skipped: {run['skipped']}", "", "", "", "", *([""] if many else [])))
        for f in run["figures"]:
            rows.append((run["store"], f["profile"], f"{f['iops']:,.0f}", f"{f['mib_per_s']:.1f}", _latency(f),
                         f"{f['iops_vs_baseline']} / {f['p99_vs_baseline']}",
                         *([" ".join(f"{x:,.0f}" for x in f["rounds_iops"])] if many else [])))
        for f in run["fio"]:
            rows.append((run["store"], f"{f['profile']} [{f['engine']}, no QEMU]", f"{f['iops']:,.0f}",
                         f"{f['mib_per_s']:.1f}", _latency(f), "", *([""] if many else [])))
    table(f"{result['engine']}; {machine['cpu_model']}, {machine['nproc']} CPUs, kernel {machine['kernel']}; "
          f"load {machine['load_average']} -> {machine['load_average_after']}; {result['seconds_per_profile']} s x "
          f"{result['rounds']} round(s) per profile",
          ["store", "profile", "IOPS", "MiB/s", "latency ms mean / p50 / p99", "x baseline IOPS / p99",
           *(["IOPS per round"] if many else [])], rows)
    for run in result["stores"]:
        if run["engine"]:
            info(f"[dim]{run['store']}: {run['engine']}[/dim]")
        if run["fio_note"]:
            info(f"[dim]{run['store']} cross-check: {run['fio_note']}[/dim]")


def _latency(figure: dict) -> str:
    return f"{figure['mean_latency_ms']:.3f} / {_ms(figure['p50_latency_ms'])} / {_ms(figure['p99_latency_ms'])}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
