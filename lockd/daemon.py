"""``lockd serve``: the asyncio daemon around ``LeaseManager``, its config file and its admin API.

Config (TOML)::

    host_id = "hosta"                 # this host's id in every lockspace
    ttl_s = 8.0                       # a host silent this long (observed) is dead
    renew_interval_s = 1.0
    margin_s = 2.0                    # self-fence at TTL - margin after the last acked renewal's start
    io_timeout_s = 2.0                # every store call
    state_dir = "/run/lockd"          # persisted state, re-adopted on restart
    admin_socket = "/run/lockd/admin.sock"
    virtlockd_socket = ""             # e.g. "/run/libvirt/virtlockd-sock" to serve libvirt (lockd.rpc)
    lease_root = "/var/lib/libvirt/lockd"  # virtlockd paths under it map to lockspaces
    lockspaces = ["hvstore-ceph"]     # joined at start (others on first acquire)
    watchdog = true                   # start lockd.watchdog: kills owners if lockd is killed or frozen
    fencer = "hvstore"                # data-path fencing through hvstore's backends (default "none")
    hvstore_config = "/etc/hvstore/hvstore.toml"

    [store]
    type = "file"                     # or "rados", "gluster", "iscsi"
    path = "/var/lib/lockd/leases"    # file: the (shared) directory
    # rados: conf = "...", pool = "...", keyring = "...", user = "admin", namespace = "lockd"
    # gluster: volume = "...", server = "127.0.0.1", port = 24007, root = "/lockd", lock_timeout_s = 2.0
    # iscsi: portal = "HOST:PORT", target = "IQN", initiator = "this host's IQN", lun = 1,
    #        chap_user/chap_password, slot_bytes = 8192, lock_timeout_s = 2.0

Admin API: a UNIX stream socket, mode 0600, peers checked with SO_PEERCRED (root or our own uid). One JSON
request per line, one JSON answer per line: ``{"op": "status"}`` -> ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": {"type": "LeaseHeld", "message": ..., "exit_code": 2, ...}}``.

Everything runs in one ``asyncio.TaskGroup``; SIGTERM/SIGINT stop the daemon *without* releasing leases
or killing owners (the next lockd re-adopts them).
"""

from __future__ import annotations

import lockd._daemon_prelude  # noqa: F401 - first, before asyncio: see there

# isort: split
import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockd.errors import ConfigError, InvalidRequest, LockdError, ProtocolError, first_lockd_error
from lockd.fence import BackendFencer, Fencer, NoFencer
from lockd.lease import LeaseTiming, Mode
from lockd.manager import LeaseManager, ManagerConfig
from lockd.memory import trim_heap
from lockd.stores import open_store
from lockd.stores.base import LeaseStore
from lockd.watchdog import ensure_running as ensure_watchdog

log = logging.getLogger("lockd")

DEFAULT_CONFIG = Path("/etc/lockd/lockd.toml")
DEFAULT_ADMIN_SOCKET = "/run/lockd/admin.sock"
MAX_REQUEST_BYTES = 65536


@dataclass(frozen=True)
class DaemonConfig:
    host_id: str
    store: dict[str, Any]
    ttl_s: float = 8.0
    renew_interval_s: float = 1.0
    margin_s: float = 2.0
    io_timeout_s: float = 2.0
    fence_timeout_s: float = 30.0
    state_dir: str = "/run/lockd"
    admin_socket: str = DEFAULT_ADMIN_SOCKET
    virtlockd_socket: str = ""
    lease_root: str = "/var/lib/libvirt/lockd"
    lockspaces: list[str] = field(default_factory=list)
    watchdog: bool = True  # the outside watchdog (lockd.watchdog) that kills owners if lockd cannot
    fencer: str = "none"  # "hvstore": data-path fencing through the volume backend (lockd.fence.BackendFencer)
    hvstore_config: str = ""  # hvstore.toml for fencer = "hvstore" (default: hvstore's own lookup)
    log_level: str = "info"

    def manager_config(self) -> ManagerConfig:
        timing = LeaseTiming(ttl_s=self.ttl_s, renew_interval_s=self.renew_interval_s, margin_s=self.margin_s)
        return ManagerConfig(host=self.host_id, timing=timing, io_timeout_s=self.io_timeout_s,
                             fence_timeout_s=self.fence_timeout_s, state_dir=Path(self.state_dir),
                             lockspaces=tuple(self.lockspaces))

    def open_fencer(self) -> Fencer:
        if self.fencer == "none":
            return NoFencer()
        if self.fencer == "hvstore":
            return BackendFencer(self.hvstore_config or None, keep_host=self.host_id)
        raise ConfigError(f"fencer must be 'none' or 'hvstore', not {self.fencer!r}")

    def open_store(self) -> LeaseStore:
        """A new, unconnected store from the ``[store]`` table (see ``lockd.stores.STORE_TYPES``)."""
        return open_store(self.store, host_id=self.host_id)


def load_config(path: str | Path, **overrides: Any) -> DaemonConfig:
    """Read and validate the TOML config; ``overrides`` (not None) replace keys. ConfigError on problems."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no lockd config at {path}: pass --config") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = set(DaemonConfig.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "host_id" not in data or "store" not in data:
        raise ConfigError(f"{path}: 'host_id' and a [store] table are required")
    try:
        config = DaemonConfig(**data)
        config.manager_config()  # validates names and timing
        config.open_fencer()
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except InvalidRequest as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config


class AdminServer:
    """The admin API: one coroutine per connection, requests answered in order."""

    def __init__(self, manager: LeaseManager, path: str, *, on_shutdown: Callable[[], None] | None = None) -> None:
        self.manager = manager
        self.path = path
        self._on_shutdown = on_shutdown
        self._server: asyncio.AbstractServer | None = None
        self._ops: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "status": self._status, "leases": self._leases, "hosts": self._hosts, "acquire": self._acquire,
            "release": self._release, "fence": self._fence, "metrics": self._metrics,
        }

    async def start(self) -> None:
        from lockd.rpc.server import bind_unix_socket

        sock = bind_unix_socket(self.path, mode=0o600)
        self._server = await asyncio.start_unix_server(self._connection, sock=sock,
                                                       limit=MAX_REQUEST_BYTES)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock: socket.socket = writer.get_extra_info("socket")
            from lockd.rpc.server import peer_credentials

            peer_pid, peer_uid = peer_credentials(sock)
            if peer_uid not in (0, os.geteuid()):
                log.warning("admin connection from pid %d uid %d refused", peer_pid, peer_uid)
                return
            while line := await reader.readline():
                answer = await self._answer(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or request.get("op") not in self._ops:
                raise ProtocolError(f"unknown admin request (ops: {', '.join(self._ops)})")
            return {"ok": True, "result": await self._ops[request["op"]](request)}
        except ValueError:
            return {"ok": False, "error": ProtocolError("admin request is not JSON").to_wire()}
        except LockdError as error:
            return {"ok": False, "error": error.to_wire()}

    async def _status(self, request: dict[str, Any]) -> Any:
        return self.manager.status()

    async def _metrics(self, request: dict[str, Any]) -> Any:
        return prometheus_text(self.manager.status())

    async def _leases(self, request: dict[str, Any]) -> Any:
        return [lease.to_json() for lease in self.manager.leases()]

    async def _hosts(self, request: dict[str, Any]) -> Any:
        return self.manager.hosts()

    async def _acquire(self, request: dict[str, Any]) -> Any:
        mode = Mode.SHARED if request.get("shared") else Mode.EXCLUSIVE
        lease = await self.manager.acquire(_text(request, "lockspace"), _text(request, "key"),
                                           _pid(request, required=True), mode=mode)
        return lease.to_json()

    async def _release(self, request: dict[str, Any]) -> Any:
        await self.manager.release(_text(request, "lockspace"), _text(request, "key"), _pid(request))
        return {"released": True}

    async def _fence(self, request: dict[str, Any]) -> Any:
        lockspace = request.get("lockspace")
        return await self.manager.fence_host(_text(request, "host"),
                                             lockspace=str(lockspace) if lockspace else None)


def _text(request: dict[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str):
        raise InvalidRequest(f"admin request needs a string {name!r}")
    return value


def _pid(request: dict[str, Any], *, required: bool = False) -> int | None:
    pid = request.get("pid")
    if pid is None and not required:
        return None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise InvalidRequest(f"admin request needs a positive integer 'pid', not {pid!r}")
    return pid


def prometheus_text(status: dict[str, Any]) -> str:
    """The status counters in Prometheus' text exposition format."""
    host = status["host"]
    lines = []
    for name, value in status["metrics"].items():
        if value is None:
            continue
        kind = "counter" if not name.endswith("_s") else "gauge"
        lines += [f"# TYPE lockd_{name} {kind}", f'lockd_{name}{{host="{host}"}} {value}']
    lines += ["# TYPE lockd_leases gauge", f'lockd_leases{{host="{host}"}} {status["leases"]}']
    for space in status["lockspaces"]:
        labels = f'host="{host}",lockspace="{space["lockspace"]}"'
        if space["since_last_renew_s"] is not None:
            lines.append(f"lockd_since_last_renew_seconds{{{labels}}} {space['since_last_renew_s']}")
        if space["self_fence_in_s"] is not None:
            lines.append(f"lockd_self_fence_in_seconds{{{labels}}} {space['self_fence_in_s']}")
    return "\n".join(lines) + "\n"


async def serve(config: DaemonConfig) -> None:
    """Run lockd until SIGTERM/SIGINT. Leases and owners survive the stop.

    The virtlockd-protocol socket is the one systemd passed (socket activation, ``systemd/lockd.socket``:
    LISTEN_FDS, preferring the fd named ``virtlockd.socket``/``lockd.socket``), else ``virtlockd_socket``
    bound here, else none."""
    from lockd.rpc.server import systemd_listen_socket

    activated = systemd_listen_socket()  # first: nothing we start may inherit the passed fds
    manager = LeaseManager(config.manager_config(), config.open_store(), config.open_fencer())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await manager.start()
    # Everything allocated so far (modules, the store client) lives as long as the daemon: keep it out of
    # the cyclic GC's full collections, whose pauses would otherwise land in ACQUIRE latencies.
    gc.freeze()
    trim_heap()
    if config.watchdog:
        ensure_watchdog(manager.config.state_dir)
    admin = AdminServer(manager, config.admin_socket)
    await admin.start()
    rpc = None
    if activated is not None or config.virtlockd_socket:
        from lockd.rpc.server import RpcServer
        from lockd.service import VirtlockdService

        service = VirtlockdService(manager, lease_root=config.lease_root)
        if activated is not None:
            rpc = RpcServer(activated, service)
        else:
            rpc = RpcServer.bind(config.virtlockd_socket, service)
        await rpc.start()
    where = "socket passed by systemd" if activated is not None else config.virtlockd_socket
    log.info("lockd %s serving: store %s, admin socket %s%s", config.host_id, manager.store.describe,
             config.admin_socket, f", virtlockd protocol on {where}" if rpc else "")
    try:
        async with asyncio.TaskGroup() as tg:
            manager.run(tg)
            tg.create_task(_trim_heap_loop(), name="lockd-trim-heap")
            await stop.wait()
            raise _Shutdown
    except* _Shutdown:
        pass
    finally:
        if rpc is not None:
            await rpc.stop()
        await admin.stop()
        await manager.stop()
        log.info("lockd %s stopped; leases kept for the next start", config.host_id)


TRIM_HEAP_EVERY_S = 30.0


async def _trim_heap_loop() -> None:
    while True:
        await asyncio.sleep(TRIM_HEAP_EVERY_S)
        trim_heap()


class _Shutdown(Exception):
    """Raised inside the task group to cancel its loops on a stop signal."""


def main(argv: list[str] | None = None) -> None:
    """``python -m lockd.daemon -c CONFIG``: what ``lockd serve`` execs, so the long-running daemon does not
    carry the CLI's libraries (typer, rich: ~10 MiB of RSS)."""
    parser = argparse.ArgumentParser(prog="lockd serve", description="run lockd in the foreground")
    parser.add_argument("-c", "--config", default=os.environ.get("LOCKD_CONFIG", str(DEFAULT_CONFIG)))
    parser.add_argument("--host-id", default=None)
    args = parser.parse_args(argv)
    try:
        settings = load_config(args.config, host_id=args.host_id)
        logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                            format=f"%(asctime)s lockd[{settings.host_id}] %(levelname)s %(message)s")
        asyncio.run(serve(settings))
    except LockdError as error:
        print(f"lockd: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except ExceptionGroup as group:
        first = first_lockd_error(group)
        if first is None:
            raise
        print(f"lockd: {first}", file=sys.stderr)
        sys.exit(getattr(first, "exit_code", 1))


if __name__ == "__main__":
    main()
