"""A minimal NBD client for ``qemu-nbd`` on a UNIX socket: guest-visible bytes of any image QEMU opens.

Why: hvstore's import/export/verify need byte access to formats only QEMU understands (qcow2, images on
gluster:// ...). ``qemu-nbd`` serves the image; this module speaks the fixed-newstyle handshake with
NBD_OPT_GO and the simple-reply transmission phase (READ, WRITE, FLUSH, DISC). Structured replies and
block status are not negotiated: ``allocated_extents`` falls back to the whole image, and export skips
zero blocks by looking at them instead.

Spec: https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

from hvstore.backends.base import BlockIO
from hvstore.errors import BackendUnavailable, HvstoreError

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
MAX_REQUEST_BYTES = 32 << 20  # qemu-nbd refuses requests above 32 MiB


class NbdError(HvstoreError):
    """The NBD server refused a request or broke the protocol."""


def _recv_exact(sock: socket.socket, length: int) -> bytes:
    buf = bytearray(length)
    view = memoryview(buf)
    got = 0
    while got < length:
        n = sock.recv_into(view[got:], length - got)
        if n == 0:
            raise NbdError("NBD server closed the connection")
        got += n
    return bytes(buf)


class NbdConnection:
    """One negotiated NBD connection (default export)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.size = 0
        self.read_only = False
        self._handle = 0

    @classmethod
    def connect_unix(cls, path: str | Path, export: str = "") -> NbdConnection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            conn = cls(sock)
            conn._handshake(export)
        except BaseException:
            sock.close()
            raise
        return conn

    def _handshake(self, export: str) -> None:
        magic, opt_magic, flags = struct.unpack(">QQH", _recv_exact(self.sock, 18))
        if magic != NBDMAGIC or opt_magic != IHAVEOPT or not flags & FLAG_FIXED_NEWSTYLE:
            raise NbdError("not a fixed-newstyle NBD server")
        self.sock.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)))
        name = export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
        while True:
            magic, _opt, reply, length = struct.unpack(">QIII", _recv_exact(self.sock, 20))
            payload = _recv_exact(self.sock, length) if length else b""
            if magic != OPT_REPLY_MAGIC:
                raise NbdError("bad option reply magic")
            if reply & 0x80000000:
                raise NbdError(f"NBD server refused export {export!r}: {payload.decode(errors='replace')}")
            if reply == REP_INFO and len(payload) >= 12 and struct.unpack(">H", payload[:2])[0] == INFO_EXPORT:
                self.size, tflags = struct.unpack(">QH", payload[2:12])
                self.read_only = bool(tflags & 2)
            elif reply == REP_ACK:
                return

    def _request(self, cmd: int, offset: int, length: int, payload: bytes = b"") -> bytes:
        self._handle += 1
        header = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, self._handle, offset, length)
        self.sock.sendall(header + payload if len(payload) < 65536 else header)
        if len(payload) >= 65536:
            self.sock.sendall(payload)
        magic, error, handle = struct.unpack(">IIQ", _recv_exact(self.sock, 16))
        if magic != SIMPLE_REPLY_MAGIC or handle != self._handle:
            raise NbdError("bad NBD reply")
        if error:
            raise NbdError(f"NBD request failed: {os.strerror(error)} (offset {offset}, length {length})")
        return _recv_exact(self.sock, length) if cmd == CMD_READ else b""

    def read(self, offset: int, length: int) -> bytes:
        chunks = []
        for start in range(offset, offset + length, MAX_REQUEST_BYTES):
            chunks.append(self._request(CMD_READ, start, min(MAX_REQUEST_BYTES, offset + length - start)))
        return b"".join(chunks)

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(data), MAX_REQUEST_BYTES):
            piece = view[start : start + MAX_REQUEST_BYTES]
            self._request(CMD_WRITE, offset + start, len(piece), bytes(piece))

    def flush(self) -> None:
        self._request(CMD_FLUSH, 0, 0)

    def close(self) -> None:
        try:
            header = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, self._handle + 1, 0, 0)
            self.sock.sendall(header)
        except OSError:
            pass
        self.sock.close()


class QemuNbdBlockIO(BlockIO):
    """BlockIO over a private ``qemu-nbd`` serving ``filename`` (anything QEMU opens) on a UNIX socket.

    The qemu-nbd process lives as long as this object; ``close`` flushes, disconnects and stops it.
    """

    def __init__(self, filename: str, fmt: str, *, writable: bool, extra_args: tuple[str, ...] = ()) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="hvstore-nbd-")
        sock_path = Path(self._tmp.name) / "nbd.sock"
        argv = ["qemu-nbd", "--socket", str(sock_path), "--format", fmt, "--cache", "none", "--aio", "native",
                "--discard", "unmap", *extra_args]
        if not writable:
            argv.append("--read-only")
        self.writable = writable
        try:
            self._proc = subprocess.Popen([*argv, filename], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except FileNotFoundError:
            self._tmp.cleanup()
            raise BackendUnavailable("qemu-nbd not found (install qemu-utils: ./hv setup)") from None
        try:
            self._conn = self._connect(sock_path)
        except BaseException:
            self._stop()
            raise

    def _connect(self, sock_path: Path) -> NbdConnection:
        deadline = time.monotonic() + 30
        while True:
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode(errors="replace")
                raise BackendUnavailable(f"qemu-nbd exited: {err.strip().splitlines()[-1] if err.strip() else '?'}")
            if sock_path.exists():
                try:
                    return NbdConnection.connect_unix(sock_path)
                except (ConnectionRefusedError, FileNotFoundError):
                    pass
            if time.monotonic() > deadline:
                raise BackendUnavailable("qemu-nbd did not start within 30 s")
            time.sleep(0.01)

    def size(self) -> int:
        return self._conn.size

    def read(self, offset: int, length: int) -> bytes:
        return self._conn.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self._conn.write(offset, data)

    def flush(self) -> None:
        self._conn.flush()

    def close(self) -> None:
        if getattr(self, "_conn", None) is None:
            return
        try:
            if self.writable:
                self._conn.flush()
        finally:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]
            self._stop()

    def _stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stderr:
            self._proc.stderr.close()
        self._tmp.cleanup()
