"""``hvstore volume ...``: provisioning verbs on STORE/NAME."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hvstore.cli import render
from hvstore.cli.context import volume_service
from hvstore.cli.render import JsonOption, info, print_json, table
from hvstore.errors import NotFound
from hvstore.model import VolumeInfo, VolumeRef
from hvstore.units import format_size, parse_size

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

app = typer.Typer(help="Create, inspect, snapshot, clone, import and export volumes (STORE/NAME).",
                  no_args_is_help=True)

_LEASE_ROOT_HELP = "lockd's lease root (the <lease><target path>)"
# disk-xml resolves the default itself: hvstore.libvirt imports libvirt's bindings (20-40 ms under load),
# which no other volume command needs.
_DiskXmlLeaseRootOption = typer.Option(None, "--lease-root", envvar="HVSTORE_LEASE_ROOT",
                                       help=f"{_LEASE_ROOT_HELP}; default: lockd's default lease root")


def __getattr__(name: str) -> Any:
    """``LeaseRootOption`` (for attach/detach, which need hvstore.libvirt anyway), built on first use."""
    if name == "LeaseRootOption":
        from hvstore.libvirt import DEFAULT_LEASE_ROOT

        return typer.Option(DEFAULT_LEASE_ROOT, "--lease-root", envvar="HVSTORE_LEASE_ROOT", help=_LEASE_ROOT_HELP)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
RefArg = typer.Argument(..., metavar="STORE/NAME", help="the volume, e.g. ceph/vm1-disk0")


def _render_volume(volume: VolumeInfo, as_json: bool) -> None:
    if as_json:
        print_json(volume.to_json())
        return
    rows = [
        ("volume", f"{volume.store}/{volume.name}"),
        ("size", f"{format_size(volume.size_bytes)} ({volume.size_bytes} bytes)"),
        ("used", format_size(volume.used_bytes)),
        ("format", volume.format),
        ("parent", volume.parent),
        ("snapshots", ", ".join(s.name for s in volume.snapshots) or "none"),
        *((key, value) for key, value in volume.details.items()),
    ]
    table(None, ["field", "value"], rows)


@app.command()
def create(ref: str = RefArg, size: str = typer.Argument(..., help="e.g. 512M, 10G, 1T"),
           as_json: bool = JsonOption) -> None:
    """Create an empty (thin where the backend can) volume."""
    target, size_bytes = VolumeRef.parse(ref), parse_size(size)
    with volume_service() as service:
        _render_volume(service.create(target, size_bytes), as_json)


@app.command("list")
def list_(store: str = typer.Argument(..., help="store name from hvstore.toml"),
          include_partial: bool = typer.Option(False, "--all", help="include half-made builds (.partial.*)"),
          as_json: bool = JsonOption) -> None:
    """List the volumes of a store."""
    with volume_service() as service:
        volumes = service.list(store, include_partial=include_partial)
    if as_json:
        print_json([v.to_json() for v in volumes])
        return
    table(f"store {store}", ["name", "size", "used", "format", "parent", "snapshots"],
          [(v.name, format_size(v.size_bytes), format_size(v.used_bytes), v.format, v.parent, len(v.snapshots))
           for v in volumes])


@app.command("info")
def info_(ref: str = RefArg, as_json: bool = JsonOption) -> None:
    """Show one volume."""
    target = VolumeRef.parse(ref)
    with volume_service() as service:
        _render_volume(service.info(target), as_json)


@app.command()
def resize(ref: str = RefArg, size: str = typer.Argument(..., help="new size, e.g. 20G"),
           shrink: bool = typer.Option(False, "--shrink", help="allow making it smaller (destroys data)"),
           as_json: bool = JsonOption) -> None:
    """Grow (or, with --shrink, shrink) a volume."""
    target, size_bytes = VolumeRef.parse(ref), parse_size(size)
    with volume_service() as service:
        _render_volume(service.resize(target, size_bytes, shrink=shrink), as_json)


@app.command()
def delete(ref: str = RefArg,
           force: bool = typer.Option(False, "--force", help="delete even if open or with clones, where the "
                                      "backend allows"),
           missing_ok: bool = typer.Option(False, "--missing-ok", help="succeed if the volume does not exist"),
           as_json: bool = JsonOption) -> None:
    """Delete a volume and its snapshots."""
    target = VolumeRef.parse(ref)
    deleted = True
    with volume_service() as service:
        try:
            service.delete(target, force=force)
        except NotFound:
            if not missing_ok:
                raise
            deleted = False
    if as_json:
        print_json({"volume": str(target), "deleted": deleted})
    else:
        info(f"deleted {target}" if deleted else f"{target} did not exist")


@app.command()
def rename(ref: str = RefArg, new_name: str = typer.Argument(..., metavar="NEW", help="NEW or STORE/NEW"),
           as_json: bool = JsonOption) -> None:
    """Rename a volume within its store."""
    source = VolumeRef.parse(ref)
    target = VolumeRef.parse(new_name if "/" in new_name else f"{source.store}/{new_name}")
    with volume_service() as service:
        _render_volume(service.rename(source, target), as_json)


@app.command()
def snapshot(ref: str = RefArg, snap: str = typer.Argument(..., metavar="SNAP"), as_json: bool = JsonOption) -> None:
    """Take a snapshot."""
    target = VolumeRef.parse(ref)
    with volume_service() as service:
        taken = service.snapshot(target, snap)
    if as_json:
        print_json(taken.to_json())
    else:
        info(f"snapshot {target}@{taken.name} taken")


@app.command()
def snapshots(ref: str = RefArg, as_json: bool = JsonOption) -> None:
    """List a volume's snapshots."""
    target = VolumeRef.parse(ref)
    with volume_service() as service:
        found = service.snapshots(target)
    if as_json:
        print_json([s.to_json() for s in found])
        return
    table(f"snapshots of {target}", ["name", "size", "protected", "created"],
          [(s.name, format_size(s.size_bytes), s.protected, s.created) for s in found])


@app.command()
def rollback(ref: str = RefArg, snap: str = typer.Argument(..., metavar="SNAP"), as_json: bool = JsonOption) -> None:
    """Roll a volume back to a snapshot (its VM must be stopped)."""
    target = VolumeRef.parse(ref)
    with volume_service() as service:
        service.rollback(target, snap)
    if as_json:
        print_json({"volume": str(target), "rolled_back_to": snap})
    else:
        info(f"{target} rolled back to {snap}")


@app.command("delete-snapshot")
def delete_snapshot(ref: str = RefArg, snap: str = typer.Argument(..., metavar="SNAP"),
                    as_json: bool = JsonOption) -> None:
    """Delete one snapshot."""
    target = VolumeRef.parse(ref)
    with volume_service() as service:
        service.delete_snapshot(target, snap)
    if as_json:
        print_json({"volume": str(target), "deleted_snapshot": snap})
    else:
        info(f"snapshot {target}@{snap} deleted")


@app.command()
def clone(source: str = typer.Argument(..., metavar="STORE/NAME@SNAP"),
          target: str = typer.Argument(..., metavar="STORE/NEW"), as_json: bool = JsonOption) -> None:
    """Clone a snapshot into a new volume of the same store."""
    src, dst = VolumeRef.parse(source, allow_snapshot=True), VolumeRef.parse(target)
    with volume_service() as service:
        _render_volume(service.clone(src, dst), as_json)


@app.command()
def flatten(ref: str = RefArg, as_json: bool = JsonOption) -> None:
    """Copy a clone's shared data from its parent, making it independent."""
    target = VolumeRef.parse(ref)
    with volume_service() as service:
        _render_volume(service.flatten(target), as_json)


class _ProgressBar:
    """A rich progress bar on stderr that appears with the first report, so a request refused before any
    byte moves prints only its error."""

    def __init__(self, label: str, *, quiet: bool) -> None:
        self.label = label
        self.quiet = quiet
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(self.label, BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(),
                                 TimeRemainingColumn(), console=render.err_console)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total)
        assert self._task is not None
        self._bar.update(self._task, completed=done, total=total)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


@app.command("import")
def import_(path: Path = typer.Argument(..., metavar="FILE", help="raw, qcow2 or any image qemu-img reads"),
            ref: str = RefArg, as_json: bool = JsonOption,
            quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar")) -> None:
    """Import an image file into a new volume (sparse-aware; nothing is left behind on failure)."""
    target = VolumeRef.parse(ref)
    with volume_service() as service, _ProgressBar(f"import {target}", quiet=quiet) as bar:
        volume = service.import_file(path, target, progress=bar)
    if as_json:
        _render_volume(volume, as_json)
    else:
        info(f"imported {path} into {target}")


@app.command("export")
def export(ref: str = RefArg, path: Path = typer.Argument(..., metavar="FILE", help="raw file to write"),
           overwrite: bool = typer.Option(False, "--overwrite", help="replace FILE if it exists"),
           as_json: bool = JsonOption,
           quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar")) -> None:
    """Export a volume's contents to a sparse raw file."""
    source = VolumeRef.parse(ref)
    with volume_service() as service, _ProgressBar(f"export {source}", quiet=quiet) as bar:
        size = service.export_file(source, path, overwrite=overwrite, progress=bar)
    if as_json:
        print_json({"volume": str(source), "file": str(path), "size_bytes": size})
    else:
        info(f"exported {source} to {path} ({format_size(size)})")


@app.command()
def uri(ref: str = RefArg, host: str = typer.Option(None, help="host identity (cephx user, initiator)"),
        as_json: bool = JsonOption) -> None:
    """Print what qemu-img / qemu-io open for this volume."""
    target = VolumeRef.parse(ref)
    with volume_service() as service:
        backend = service.backend(target.store)
        found, fmt = backend.uri(target.name, host=host), backend.qemu_format(target.name)
    if as_json:
        print_json({"volume": str(target), "uri": found, "format": fmt})
    else:
        typer.echo(found)


@app.command("disk-xml")
def disk_xml(ref: str = RefArg, target_dev: str = typer.Option("vda", "--target", help="guest device, e.g. vdb"),
             host: str = typer.Option(None, help="host identity (cephx user, initiator)"),
             lease: bool = typer.Option(False, "--lease", help="also the <lease> lockd locks (network disks)"),
             lease_root: str | None = _DiskXmlLeaseRootOption, as_json: bool = JsonOption) -> None:
    """Print the libvirt <disk> element for this volume (with --lease: the <lease> first)."""
    target = VolumeRef.parse(ref)
    with volume_service() as service:
        backend = service.backend(target.store)
        if lease:
            from hvstore.libvirt import DEFAULT_LEASE_ROOT, disk_with_lease_xml

            lease_root = lease_root or DEFAULT_LEASE_ROOT
            elements = disk_with_lease_xml(backend, target.name, target=target_dev, host=host, lease_root=lease_root)
        else:
            elements = [backend.disk_xml(target.name, target=target_dev, host=host)]
    if as_json:
        print_json({"volume": str(target), "disk_xml": elements[-1],
                    "lease_xml": elements[0] if len(elements) == 2 else None})
    else:
        typer.echo("\n".join(elements))


@app.command()
def cleanup(store: str = typer.Argument(...), as_json: bool = JsonOption) -> None:
    """Remove half-made volumes left by a crashed import or clone on this host."""
    with volume_service() as service:
        removed = service.cleanup(store)
    if as_json:
        print_json({"store": store, "removed": removed})
    else:
        info("removed: " + (", ".join(removed) or "nothing"))
