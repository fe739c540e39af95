"""``hvstore drbd ...``: what only DRBD stores have: roles, the migration window, split brain, protocols.

Every command takes STORE/NAME of a volume on a ``type = "drbd"`` store and goes to ``DrbdBackend``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from hvstore.backends.drbd import DrbdBackend
from hvstore.cli.context import volume_service
from hvstore.cli.render import JsonOption, info, print_json, table
from hvstore.errors import InvalidArgument
from hvstore.model import VolumeRef
from hvstore.tools.drbd_conf import SplitBrainPolicy

app = typer.Typer(help="DRBD stores: roles, migration window, split brain, replication protocol.",
                  no_args_is_help=True)
RefArg = typer.Argument(..., metavar="STORE/NAME", help="a volume on a drbd store, e.g. drbd/vm1-disk0")


@contextmanager
def _drbd(ref: str) -> Iterator[tuple[DrbdBackend, str]]:
    target = VolumeRef.parse(ref)
    with volume_service() as service:
        backend = service.backend(target.store)
        if not isinstance(backend, DrbdBackend):
            raise InvalidArgument(f"store {target.store!r} is a {backend.kind} store, not drbd")
        yield backend, target.name


@app.command()
def status(ref: str = RefArg, as_json: bool = JsonOption) -> None:
    """Each node's role, disk and connection state (drbdsetup events2) and split-brain flag."""
    with _drbd(ref) as (backend, name):
        details = backend.info(name).details
    if as_json:
        print_json(details)
        return
    table(f"{ref} ({details['resource']}, {details['device']}, protocol {details['protocol']})",
          ["node", "role", "disk", "connection", "replication", "out of sync", "split brain"],
          [(node, s.get("role"), s.get("disk"), s.get("connection"), s.get("replication"),
            s.get("out_of_sync_kib"), s.get("split_brain", s.get("error"))) for node, s in details["nodes"].items()])


@app.command()
def role(ref: str = RefArg, node: str = typer.Argument(..., help="node name"),
         new_role: str = typer.Argument(..., metavar="primary|secondary"),
         switch: bool = typer.Option(False, "--switch", help="demote the other node first (primary only)")) -> None:
    """Make a node Primary or Secondary. A second Primary is refused outside the migration window."""
    with _drbd(ref) as (backend, name):
        if switch and new_role == "primary":
            backend.switch_primary(name, node)
        else:
            backend.set_role(name, node, new_role)
    info(f"{ref}: {node} is now {new_role}")


@app.command("migrate-prepare")
def migrate_prepare(ref: str = RefArg) -> None:
    """Open the migration window: dual-primary, refused unless UpToDate on both nodes."""
    with _drbd(ref) as (backend, name):
        backend.migrate_prepare(name)
    info(f"{ref}: both nodes Primary until 'hvstore drbd migrate-finish'")


@app.command("migrate-finish")
def migrate_finish(ref: str = RefArg,
                   keep: str = typer.Option(..., "--keep", help="the node that stays Primary")) -> None:
    """Close the migration window: the other node is demoted and two Primaries are forbidden again."""
    with _drbd(ref) as (backend, name):
        backend.migrate_finish(name, keep=keep)
    info(f"{ref}: single Primary on {keep}")


@app.command("split-brain-resolve")
def split_brain_resolve(ref: str = RefArg,
                        survivor: str = typer.Option(..., "--survivor", help="the node whose data is kept")) -> None:
    """Resolve a split brain: every other node discards its changes (--discard-my-data) and resyncs."""
    with _drbd(ref) as (backend, name):
        backend.resolve_split_brain(name, survivor=survivor)
    info(f"{ref}: resolved, {survivor}'s data kept")


@app.command()
def fence(ref: str = RefArg, survivor: str = typer.Option(..., "--survivor", help="the node that keeps running"),
          undo: bool = typer.Option(False, "--undo", help="reconnect the fenced peer (it resyncs)")) -> None:
    """Fence the peer of SURVIVOR: demote it, disconnect it, mark its disk Outdated."""
    with _drbd(ref) as (backend, name):
        if undo:
            backend.unfence_peer(name)
        else:
            backend.fence_peer(name, survivor=survivor)


@app.command("split-brain-policy")
def split_brain_policy(ref: str = RefArg,
                       after_sb_0pri: str = typer.Option("discard-zero-changes", "--0pri"),
                       after_sb_1pri: str = typer.Option("discard-secondary", "--1pri"),
                       after_sb_2pri: str = typer.Option("disconnect", "--2pri")) -> None:
    """Set the automatic after-split-brain recovery policies of one volume."""
    try:
        policy = SplitBrainPolicy(after_sb_0pri, after_sb_1pri, after_sb_2pri)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    with _drbd(ref) as (backend, name):
        backend.set_split_brain_policy(name, policy)


@app.command()
def protocol(ref: str = RefArg, value: str = typer.Argument(..., metavar="A|B|C")) -> None:
    """Change the replication protocol (the resource reconnects)."""
    if value not in ("A", "B", "C"):
        raise InvalidArgument(f"replication protocol {value!r}: expected A, B or C")
    with _drbd(ref) as (backend, name):
        backend.set_protocol(name, value)


@app.command()
def bench(store: str = typer.Argument("drbd", help="a drbd store"),
          scale: float = typer.Option(1.0, help="multiplies the number of writes"),
          rounds: int = typer.Option(3, min=1, help="rounds; each figure is the best round"),
          as_json: bool = JsonOption) -> None:
    """4 KiB and 1 MiB synchronous (O_DIRECT) write throughput for protocols A, B and C; ratios vs C."""
    from hvstore.bench.drbd_protocols import run_drbd_protocols

    with volume_service() as service:
        backend = service.backend(store)
        if not isinstance(backend, DrbdBackend):
            raise InvalidArgument(f"store {store!r} is a {backend.kind} store, not drbd")
        figures = run_drbd_protocols(backend, scale=scale, rounds=rounds, log=lambda line: info(f"[dim]{line}[/dim]"))
    if as_json:
        print_json([f.to_json() for f in figures])
        return
    table(f"DRBD protocols on {store}", ["protocol", "pattern", "writes", "seconds", "MiB/s", "writes/s", "vs C"],
          [(f.protocol, f.pattern, f.writes, f.seconds, f.mib_per_s, f.writes_per_s, f.ratio_vs_c) for f in figures])
