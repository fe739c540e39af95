"""A reaping parent for one lab daemon: ``python -m hvstore.lab.reaper LOGFILE -- ARGV...``.

PID 1 on these machines reaps orphans only every 1-2 s, so a daemon that double-forks (libvirt's QEMU,
glusterd's bricks) looks alive for seconds after it died. This process marks itself a child subreaper
(prctl PR_SET_CHILD_SUBREAPER), runs the daemon in the foreground as its child, reaps every descendant
at once, and when asked to stop (SIGTERM) stops the daemon and everything below it. Core dumps are off
(a crashed gluster brick once wrote a 140 MB /core).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
import time

from hvstore.lab.procs import alive, descendants

PR_SET_CHILD_SUBREAPER = 36
STOP_GRACE_S = 10.0


def _set_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _kill_tree(sig: int) -> None:
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap_all() -> list[tuple[int, int]]:
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m hvstore.lab.reaper LOGFILE -- ARGV...", file=sys.stderr)
        return 2
    logfile, command = argv[0], argv[2:]
    _set_subreaper()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    stopping = False

    def on_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log_fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    child = os.fork()
    if child == 0:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            os.write(2, f"reaper: cannot run {command[0]}: {exc}\n".encode())
            os._exit(127)
    os.close(log_fd)
    exit_status = 0
    child_done = False
    stop_sent_at: float | None = None
    while True:
        for pid, status in _reap_all():
            if pid == child:
                child_done = True
                exit_status = os.waitstatus_to_exitcode(status)
        if stopping and stop_sent_at is None:
            stop_sent_at = time.monotonic()
            _kill_tree(signal.SIGTERM)
        if child_done and not stopping:
            # The daemon is gone: what it left behind (bricks, QEMUs) belongs to the lab, stop it too.
            stopping = True
            stop_sent_at = time.monotonic()
            _kill_tree(signal.SIGTERM)
        if stop_sent_at is not None:
            if not descendants(os.getpid()) and (child_done or not alive(child)):
                _reap_all()  # the last ones may have died since the loop's reap
                return exit_status if exit_status >= 0 else 128 - exit_status
            if time.monotonic() - stop_sent_at > STOP_GRACE_S:
                _kill_tree(signal.SIGKILL)
        time.sleep(0.02)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
