"""The ``hvstore`` command: a thin typer layer over the library (parse -> call -> render).

Conventions for every command: results go to stdout, diagnostics to stderr; ``--json`` prints one JSON
document with stable snake_case keys; errors are one line on stderr with exit code 2 for anything the
user can fix and 1 for a failure of a store or tool (``hvstore.errors``). Converted here, once.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from hvstore.cli.context import app_state
from hvstore.errors import HvstoreError

# Every command, imported only when it runs (or for --help): importing all of them with their libraries
# (rich tables, libvirt, the lab, reports, scenarios) cost more than the work of a short command.
# name -> (module, attribute): a typer app of subcommands, or one command function.
COMMANDS: dict[str, tuple[str, str]] = {
    "volume": ("hvstore.cli.volume", "app"),
    "store": ("hvstore.cli.store", "app"),
    "lab": ("hvstore.cli.lab", "app"),
    "bench": ("hvstore.cli.bench", "app"),
    "drbd": ("hvstore.cli.drbd", "app"),
    "scenario": ("hvstore.cli.scenario", "app"),
    "caps": ("hvstore.cli.store", "caps"),
    "compare": ("hvstore.cli.compare", "compare"),
    "demo": ("hvstore.cli.store", "demo"),
    "attach": ("hvstore.cli.domain", "attach"),
    "detach": ("hvstore.cli.domain", "detach"),
}


class _LazyCommands(TyperGroup):
    """The top-level group: builds a command from ``COMMANDS`` the first time it is looked up."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*self.commands, *(name for name in COMMANDS if name not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute = COMMANDS[cmd_name]
            target = getattr(importlib.import_module(module), attribute)
            if isinstance(target, typer.Typer):
                command: Any = typer.main.get_group(target)  # a group even with one subcommand
            else:
                single = typer.Typer(add_completion=False)
                single.command(cmd_name)(target)
                command = typer.main.get_command(single)
            command.name = cmd_name
            self.commands[cmd_name] = command
        return self.commands.get(cmd_name)


app = typer.Typer(
    name="hvstore",
    help="Volumes on distributed storage for libvirt/QEMU hosts: one interface over local, rbd, gluster, "
    "iscsi, sheepdog and drbd stores.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=_LazyCommands,
)


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
