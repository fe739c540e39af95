"""lockd under systemd: the shipped units, and socket activation with a real sd_listen_fds handover.

``systemd-socket-activate`` (from the systemd package) binds the socket and execs ``lockd serve`` with
LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES exactly as systemd does for ``systemd/lockd.socket``; lockd must serve
the virtlockd protocol on that fd (it has no ``virtlockd_socket`` of its own here). No lab service needed:
leases go to a file store in a temporary directory.
"""

from __future__ import annotations

import configparser
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

from lockd.rpc.server import PRIVILEGED_SOCKET_PATH, SYSTEMD_SOCKET_NAMES

REPO = Path(__file__).resolve().parents[3]
UNITS = REPO / "systemd"
PING = struct.pack(">7I", 28, 0x6B656570, 1, 1, 2, 0, 0)  # keepalive program, proc PING, type MESSAGE
PONG = struct.pack(">7I", 28, 0x6B656570, 1, 2, 2, 0, 0)


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser


def test_the_socket_unit_takes_virtlockds_place_and_names_the_fd_lockd_looks_for() -> None:
    sock = unit("lockd.socket")
    assert sock["Socket"]["ListenStream"] == PRIVILEGED_SOCKET_PATH
    assert sock["Socket"]["SocketMode"] == "0600"
    assert sock["Socket"]["FileDescriptorName"] in SYSTEMD_SOCKET_NAMES
    assert sock["Install"]["Alias"] == "virtlockd.socket"  # what libvirtd.service Requires= resolves to


def test_the_service_unit_stops_lockd_alone_and_keeps_its_state() -> None:
    service = unit("lockd.service")["Service"]
    assert service["KillMode"] == "process"  # the watchdog survives a stop; VMs are never in this cgroup
    assert service["RuntimeDirectoryPreserve"] == "yes"
    assert service["ExecStart"].split()[1:3] == ["serve", "-c"]


def test_lockd_serves_the_socket_systemd_passes(tmp_path: Path) -> None:
    root = Path(f"/tmp/lockd-sd-{uuid.uuid4().hex[:6]}")  # UNIX socket paths are limited to 107 bytes
    root.mkdir()
    listen = root / "virtlockd-sock"
    config = root / "lockd.toml"
    config.write_text("\n".join([
        'host_id = "hosta"', "watchdog = false", f'state_dir = "{root / "state"}"',
        f'admin_socket = "{root / "admin.sock"}"', "", "[store]", 'type = "file"', f'path = "{root / "leases"}"',
    ]) + "\n")
    log = open(root / "lockd.log", "wb")
    daemon = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(listen), "--fdname=virtlockd.socket",
         sys.executable, "-m", "lockd.cli", "serve", "-c", str(config)],
        stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    try:
        deadline = time.monotonic() + 20
        while not listen.exists():
            assert daemon.poll() is None, (root / "lockd.log").read_text()
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.05)
        # Like systemd, it starts the service on the first connection; that connection waits in the
        # backlog until lockd, started, accepts it.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(20)
            client.connect(str(listen))
            client.sendall(PING)
            assert client.recv(64) == PONG
        assert "virtlockd protocol on socket passed by systemd" in (root / "lockd.log").read_text()
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)
        log.close()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
