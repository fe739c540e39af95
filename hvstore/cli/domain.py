"""``hvstore attach`` / ``hvstore detach``: a volume (with its lease) into or out of a libvirt domain."""

from __future__ import annotations

import dataclasses

import typer

from hvstore.cli.context import volume_service
from hvstore.cli.render import JsonOption, info, print_json
from hvstore.cli.volume import LeaseRootOption, RefArg
from hvstore.libvirt import attach as attach_volume
from hvstore.libvirt import connection
from hvstore.libvirt import detach as detach_volume
from hvstore.model import VolumeRef

DomainArg = typer.Argument(..., metavar="DOMAIN", help="libvirt domain name")
UriOption = typer.Option(None, "--connect", "-C", help="libvirt URI (default: $LIBVIRT_DEFAULT_URI, the lab's "
                         "libvirtd, qemu:///system)")
LiveOption = typer.Option(False, "--live", help="affect the running domain")
ConfigOption = typer.Option(False, "--config", help="affect the persistent definition")


def attach(domain: str = DomainArg, ref: str = RefArg,
           target: str = typer.Option(None, "--target", help="guest device (default: the next free vdX)"),
           host: str = typer.Option(None, help="host identity (cephx user, initiator)"),
           live: bool = LiveOption, config: bool = ConfigOption, uri: str = UriOption,
           lease_root: str = LeaseRootOption, as_json: bool = JsonOption) -> None:
    """Attach a volume to a domain; a network disk gets a <lease> so lockd keeps it single-writer."""
    volume = VolumeRef.parse(ref)
    with volume_service() as service, connection(uri) as conn:
        result = attach_volume(conn, domain, service.backend(volume.store), volume.name, target=target,
                               live=live, config=config, host=host, lease_root=lease_root)
    if as_json:
        print_json({"volume": str(volume), **dataclasses.asdict(result)})
    else:
        lease = f" with lease {result.lease.lockspace}/{result.lease.key}" if result.lease else ""
        info(f"attached {volume} to {domain} as {result.target}{lease}")


def detach(domain: str = DomainArg, ref: str = RefArg, live: bool = LiveOption, config: bool = ConfigOption,
           uri: str = UriOption, lease_root: str = LeaseRootOption, as_json: bool = JsonOption) -> None:
    """Detach a volume (and then its lease) from a domain."""
    volume = VolumeRef.parse(ref)
    with volume_service() as service, connection(uri) as conn:
        result = detach_volume(conn, domain, service.backend(volume.store), volume.name, live=live, config=config,
                               lease_root=lease_root)
    if as_json:
        print_json({"volume": str(volume), **dataclasses.asdict(result)})
    else:
        if result.pending:
            info(f"detach of {volume} ({result.target}) requested; the guest has not released it yet")
        else:
            info(f"detached {volume} ({result.target}) from {domain}")
