"""The ``hvstore`` command: a thin typer layer over the library (parse -> call -> render).

Conventions for every command: results go to stdout, diagnostics to stderr; ``--json`` prints one JSON
document with stable snake_case keys; errors are one line on stderr with exit code 2 for anything the
user can fix and 1 for a failure of a store or tool (``hvstore.errors``). Converted here, once.
"""

from __future__ import annotations

import os
import sys

import typer

from hvstore.cli import bench, compare, domain, drbd, lab, scenario, store, volume
from hvstore.cli.context import app_state
from hvstore.errors import HvstoreError

app = typer.Typer(
    name="hvstore",
    help="Volumes on distributed storage for libvirt/QEMU hosts: one interface over local, rbd, gluster, "
    "iscsi, sheepdog and drbd stores.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(volume.app, name="volume")
app.add_typer(store.app, name="store")
app.add_typer(lab.app, name="lab")
app.add_typer(bench.app, name="bench")
app.add_typer(drbd.app, name="drbd")
app.add_typer(scenario.app, name="scenario")
app.command("caps")(store.caps)
app.command("compare")(compare.compare)
app.command("demo")(store.demo)
app.command("attach")(domain.attach)
app.command("detach")(domain.detach)


@app.callback()
def _global_options(
    config: str = typer.Option(None, "--config", "-c", help="hvstore.toml to use (default: $HVSTORE_CONFIG, "
                               "then the lab's)", envvar="HVSTORE_CONFIG"),
) -> None:
    app_state.config_path = config


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code instead of printing tracebacks."""
    try:
        app(args=argv, prog_name="hvstore")  # typer handles usage errors itself (exit 2) and raises SystemExit
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except HvstoreError as exc:
        print(f"hvstore: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hvstore: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an unmapped library error: one line, traceback on request
        if os.environ.get("HVSTORE_DEBUG"):
            raise
        print(f"hvstore: internal error: {type(exc).__name__}: {exc} (HVSTORE_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1
    return 0


def run() -> None:
    sys.exit(main())
