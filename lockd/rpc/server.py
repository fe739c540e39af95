"""The virtlockd-socket server: asyncio UNIX listener, one coroutine per connection.

libvirt's ``lockd`` plugin connects to ``/run/libvirt/virtlockd-sock`` (or the session equivalent) and
speaks the lock program; this module owns the sockets and nothing else. Each connection's coroutine
owns its ``ConnectionState`` (SO_PEERCRED pid and uid, registered owner, restricted flag), decodes
frames with ``virnet.FrameDecoder``, answers through ``virtlockd.handle_message`` one call at a time
(like virtlockd, which reads one request per client at a time), and in ``finally`` tells the
``LockService`` how the connection ended, which is how the QEMU-held connection's close releases its
leases.

Listening: ``RpcServer.bind(path)`` binds the path itself (mode 0600, refusing a path another daemon
still answers on), ``RpcServer.from_systemd()`` takes a socket passed by systemd socket activation
(``LISTEN_FDS``/``LISTEN_PID``, preferring the fd named ``virtlockd.socket`` in ``LISTEN_FDNAMES``).
Access control as virtlockd: a peer whose uid is not allowed (default: our own euid) is closed without
a word. Stopping the server never reports the connections as closed by their peers, so stopping or
restarting lockd does not release leases or kill VMs (the difference from virtlockd, §6.7).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable, Iterable

from lockd.errors import ConfigError, ProtocolError
from lockd.rpc.virnet import MAX_FRAME_BYTES, FrameDecoder, Message
from lockd.rpc.virtlockd import ConnectionEnd, ConnectionState, LockService, handle_message

log = logging.getLogger(__name__)

PRIVILEGED_SOCKET_PATH = "/run/libvirt/virtlockd-sock"
SYSTEMD_SOCKET_NAMES = ("virtlockd.socket", "lockd.socket")
SD_LISTEN_FDS_START = 3
READ_CHUNK_BYTES = 65536
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def default_socket_path() -> str:
    """Where lockd.so connects: the privileged path for root, else $XDG_RUNTIME_DIR/libvirt/... (§1.1)."""
    if os.geteuid() == 0:
        return PRIVILEGED_SOCKET_PATH
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or os.path.expanduser("~/.cache")
    return os.path.join(runtime_dir, "libvirt", "virtlockd-sock")


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process that connected, as the kernel recorded them at connect time."""
    pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return pid, uid


def systemd_listen_socket(names: Iterable[str] = SYSTEMD_SOCKET_NAMES) -> socket.socket | None:
    """The listening UNIX socket systemd passed us, or None when we were not socket-activated.

    Follows sd_listen_fds(3): only valid when LISTEN_PID is our pid; the variables are removed so
    that children do not inherit them. With several fds, the first whose LISTEN_FDNAMES entry is in
    ``names`` wins, else the first fd.
    """
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    fd_names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    for variable in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(variable, None)
    if count < 1:
        return None
    wanted = set(names)
    chosen = 0
    for index in range(count):
        if index < len(fd_names) and fd_names[index] in wanted:
            chosen = index
            break
    fd = SD_LISTEN_FDS_START + chosen
    os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ConfigError(f"systemd passed fd {fd}, which is not a listening UNIX stream socket")
    return sock


def bind_unix_socket(path: str, *, mode: int = 0o600) -> socket.socket:
    """A listening socket at ``path``; a stale socket file is replaced, a live one is refused."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
        if _socket_answers(path):
            raise ConfigError(f"another daemon already listens on {path} (virtlockd?); stop it first, e.g. "
                              "systemctl stop virtlockd.socket virtlockd.service")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Bind under a umask so that the socket never exists with wider permissions, not even briefly.
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _socket_answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as error:
        if error.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()
    return True


class RpcServer:
    """Serves the lock program on one listening socket.

    Lifecycle: constructed (stores the socket) → ``start()`` (accepting) → ``stop()`` (not accepting,
    every connection coroutine cancelled, socket file removed if we bound it). ``serve_forever()``
    starts and runs until cancelled. Usable as ``async with RpcServer(...) as server:``.
    """

    def __init__(self, sock: socket.socket, service: LockService, *,
                 allowed_uids: Iterable[int] | None = None, max_frame_bytes: int = MAX_FRAME_BYTES,
                 unlink_on_stop: str | None = None,
                 credentials: Callable[[socket.socket], tuple[int, int]] = peer_credentials) -> None:
        self._sock = sock
        self._service = service
        self._allowed_uids = frozenset(allowed_uids) if allowed_uids is not None else frozenset({os.geteuid()})
        self._max_frame_bytes = max_frame_bytes
        self._unlink_on_stop = unlink_on_stop
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._in_flight: set[asyncio.Task[Message | None]] = set()
        # Injectable so that tests can replay recorded traffic whose peers had other pids.
        self._credentials = credentials

    @classmethod
    def bind(cls, path: str, service: LockService, *, allowed_uids: Iterable[int] | None = None,
             max_frame_bytes: int = MAX_FRAME_BYTES,
             credentials: Callable[[socket.socket], tuple[int, int]] = peer_credentials) -> RpcServer:
        """A server on a socket it binds at ``path`` (mode 0600) and removes again on ``stop()``."""
        return cls(bind_unix_socket(path), service, allowed_uids=allowed_uids,
                   max_frame_bytes=max_frame_bytes, unlink_on_stop=path, credentials=credentials)

    @classmethod
    def from_systemd(cls, service: LockService, *, allowed_uids: Iterable[int] | None = None,
                     max_frame_bytes: int = MAX_FRAME_BYTES) -> RpcServer | None:
        """A server on the socket systemd passed (never unlinked by us), or None when not activated."""
        sock = systemd_listen_socket()
        if sock is None:
            return None
        return cls(sock, service, allowed_uids=allowed_uids, max_frame_bytes=max_frame_bytes)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._on_connect, sock=self._sock)

    async def stop(self, *, drain_timeout_s: float = 10.0) -> None:
        """Stop accepting, let calls already handed to the service finish (up to ``drain_timeout_s``:
        cancelling a lease operation halfway would leave the store and the manager disagreeing), then
        end every connection. Their owners' leases stay held (``ConnectionEnd.SERVER_SHUTDOWN``)."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=drain_timeout_s)
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._unlink_on_stop is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unlink_on_stop)

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> RpcServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_connection(reader, writer)
        finally:
            self._connections.discard(task)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock: socket.socket = writer.get_extra_info("socket")
        pid, uid = self._credentials(sock)
        if uid not in self._allowed_uids:
            log.warning("refusing connection from pid %d uid %d (allowed uids: %s)", pid, uid,
                        sorted(self._allowed_uids))
            writer.close()
            return
        conn = ConnectionState(peer_pid=pid, peer_uid=uid)
        decoder = FrameDecoder(self._max_frame_bytes)
        end = ConnectionEnd.PEER_CLOSED
        try:
            while data := await reader.read(READ_CHUNK_BYTES):
                for message in decoder.feed(data):
                    reply = await self._dispatch(message, conn)
                    if reply is not None:
                        writer.write(reply.encode())
                        await writer.drain()
        except ProtocolError as error:
            end = ConnectionEnd.PROTOCOL_ERROR
            log.warning("closing connection of pid %d: %s", pid, error)
        except ConnectionError:
            end = ConnectionEnd.PEER_CLOSED
        except asyncio.CancelledError:
            end = ConnectionEnd.SERVER_SHUTDOWN
            raise
        except Exception:
            end = ConnectionEnd.SERVER_ERROR
            log.exception("closing connection of pid %d after an internal error", pid)
        finally:
            writer.close()
            if self._stopping:
                end = ConnectionEnd.SERVER_SHUTDOWN
            # Shielded: a stop() arriving now must not cut the release of a dead QEMU's leases short.
            await asyncio.shield(self._service.connection_closed(conn, end))

    async def _dispatch(self, message: Message, conn: ConnectionState) -> Message | None:
        """``handle_message`` in its own shielded task, so that cancelling the connection (stop) never
        interrupts a call the service has started; ``stop()`` waits for these."""
        task = asyncio.ensure_future(handle_message(message, conn, self._service))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        return await asyncio.shield(task)
