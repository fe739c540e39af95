"""Run a daemon in a private mount namespace with some directories bind-mounted over system paths.

``python -m hvstore.lab.nsexec --bind SRC:DST ... [--pre ARGV_JSON ...] -- ARGV...``

Why: libvirtd as root reads /etc/libvirt and puts its sockets (and looks for virtlockd's) under /run/libvirt;
neither is configurable enough to run a private instance. In its own mount namespace the lab's libvirtd,
virtlogd and QEMUs see the lab's directories at those paths, and the host's libvirt stays untouched. The
``--pre`` commands (e.g. ``virtlogd -d``) run inside the namespace before the daemon is exec'd; daemons they
fork are reparented to the lab's reaper (a subreaper), which reaps and stops them.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_BIND = 4096


def _libc_call(name: str, *args: object) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}{args}: {os.strerror(errno)}")


def enter_private_namespace(binds: list[tuple[str, str]]) -> None:
    _libc_call("unshare", CLONE_NEWNS)
    _libc_call("mount", b"none", b"/", None, MS_REC | MS_PRIVATE, None)
    for source, target in binds:
        os.makedirs(target, exist_ok=True)
        _libc_call("mount", source.encode(), target.encode(), None, MS_BIND | MS_REC, None)


def main(argv: list[str]) -> int:
    binds: list[tuple[str, str]] = []
    pre: list[list[str]] = []
    while argv and argv[0] != "--":
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--bind":
            source, _, target = value.partition(":")
            binds.append((source, target))
        elif flag == "--pre":
            pre.append(json.loads(value))
        else:
            print(f"nsexec: unknown option {flag}", file=sys.stderr)
            return 2
    command = argv[1:]
    if not command:
        print("usage: python -m hvstore.lab.nsexec --bind SRC:DST ... -- ARGV...", file=sys.stderr)
        return 2
    enter_private_namespace(binds)
    for pre_argv in pre:
        subprocess.run(pre_argv, check=True)
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
