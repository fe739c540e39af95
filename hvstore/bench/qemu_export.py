"""A volume served by ``qemu-nbd`` on a private UNIX socket, so fio's nbd engine drives QEMU's block layer.

Why qemu-nbd: it opens anything ``qemu-img`` opens (a file, ``rbd:``, ``gluster://``, ``iscsi://``, in
raw or qcow2) through the same block drivers a VM's disk uses, with the settings a tuned deployment gives
libvirt: ``cache=none`` (O_DIRECT on files, ``rbd_cache=false`` on librbd), ``aio=native`` or ``io_uring``
(only the file driver uses it; network drivers have their own event loop), ``discard=unmap``. fio then
measures true random I/O with per-request latency, identically for every backend.

What it cannot do: a volume whose URI is a device inside another machine (DRBD's nodes) is not
reachable from this host. The export is private (a socket in a fresh temporary directory) and the
process lives exactly as long as the ``with`` block; gluster:// pays libgfapi's ~10 s ``glfs_fini``
when it stops.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from hvstore.errors import BackendUnavailable
from hvstore.protocols.nbd import NbdConnection

EXPORT_NAME = "disk"
START_TIMEOUT_S = 60.0  # gluster:// needs a few seconds to mount before qemu-nbd listens
STOP_TIMEOUT_S = 30.0  # and ~10 s to unmount


def qemu_nbd_argv(filename: str, fmt: str, socket_path: str, *, aio: str) -> list[str]:
    """qemu-nbd with a tuned deployment's settings; ``--persistent``: fio connects once per job."""
    return ["qemu-nbd", f"--socket={socket_path}", f"--export-name={EXPORT_NAME}", f"--format={fmt}",
            "--cache=none", f"--aio={aio}", "--discard=unmap", "--persistent", "--shared=8", filename]


def nbd_uri(socket_path: str) -> str:
    return f"nbd+unix:///{EXPORT_NAME}?socket={socket_path}"


class QemuNbdExport:
    """``with QemuNbdExport(uri, fmt, aio=...) as export:`` -> ``export.nbd_uri`` for fio."""

    def __init__(self, filename: str, fmt: str, *, aio: str) -> None:
        self.filename, self.fmt, self.aio = filename, fmt, aio
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.argv: list[str] = []
        self.nbd_uri = ""

    def __enter__(self) -> QemuNbdExport:
        self._tmp = tempfile.TemporaryDirectory(prefix="hvstore-bench-nbd-")
        socket_path = str(Path(self._tmp.name) / "nbd.sock")
        self.argv = qemu_nbd_argv(self.filename, self.fmt, socket_path, aio=self.aio)
        log = (Path(self._tmp.name) / "qemu-nbd.log").open("wb")
        try:
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        except FileNotFoundError:
            self._cleanup()
            raise BackendUnavailable("qemu-nbd is not installed (Debian: qemu-utils)") from None
        finally:
            log.close()
        try:
            self._wait_ready(Path(socket_path))
        except BaseException:
            self.stop()
            raise
        self.nbd_uri = nbd_uri(socket_path)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _log_tail(self) -> str:
        path = Path(self._tmp.name) / "qemu-nbd.log" if self._tmp else None
        text = path.read_text(errors="replace").strip() if path and path.exists() else ""
        return text.splitlines()[-1] if text else "no message"

    def _wait_ready(self, socket_path: Path) -> None:
        """Until a real NBD handshake succeeds (the socket file exists before qemu-nbd accepts)."""
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise BackendUnavailable(f"qemu-nbd exited ({self._proc.returncode}): {self._log_tail()}")
            if socket_path.exists():
                try:
                    NbdConnection.connect_unix(socket_path, EXPORT_NAME).close()
                    return
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
            if time.monotonic() > deadline:
                raise BackendUnavailable(f"qemu-nbd did not serve {self.filename} within {START_TIMEOUT_S:g} s")
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
