"""The one place hvstore spawns short-lived tools. argv lists only, never a shell.

Long-running daemons are started by the lab (``hvstore.lab.reaper``), not here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hvstore.errors import ToolFailed


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    timeout_s: float = 120,
    check: bool = True,
    input_text: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Completed:
    """Run a tool to completion and return its output.

    Raises ToolFailed when it exits non-zero (with ``check``), cannot be found, or outlives ``timeout_s``.
    """
    argv = [str(a) for a in argv]
    full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
    try:
        proc = subprocess.run(
            argv, input=input_text, capture_output=True, text=True, timeout=timeout_s, env=full_env,
            stdin=None if input_text is not None else subprocess.DEVNULL, cwd=cwd,
        )
    except FileNotFoundError:
        raise ToolFailed(argv, 127, f"{argv[0]}: command not found (run the set-up: ./hv setup)") from None
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise ToolFailed(argv, -9, f"{stderr}\ntimed out after {timeout_s:g} s") from None
    done = Completed(argv, proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise ToolFailed(argv, proc.returncode, proc.stderr or proc.stdout)
    return done
