"""Reader for the recorded lockd.so <-> virtlockd traffic (tests/data/virtlockd/*-wire-hex.txt).

The recording (libvirt 9.0.0, Debian 12; copied from ../shared/vectors/virtlockd) is a strace-derived
log: one line per event (``NEW client connection``, ``C->S``/``S->C`` frames followed by a ``hex:``
line, ``EOF from client``, ``CLOSE by server``, and the daemon's ``kill(PID, SIGTERM)`` calls).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

VECTORS = Path(__file__).resolve().parents[1] / "data" / "virtlockd" / "9.0.0-lockd-plugin-wire-hex.txt"

_EVENT = re.compile(r"^\S+ (?:conn#(?P<conn>\d+)\s+)?\s*(?P<text>.*)$")
_KILL = re.compile(r"kill\((?P<pid>\d+), SIGTERM\)")


@dataclass(frozen=True)
class Event:
    """One line of the recording. ``kind`` is new, call, reply, eof, close or kill."""

    kind: str
    conn: int | None
    frame: bytes = b""
    pid: int | None = None
    summary: str = ""


def load_events(path: Path = VECTORS) -> list[Event]:
    lines = path.read_text().splitlines()
    events: list[Event] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        match = _EVENT.match(line)
        if match is None or not line.strip():
            continue
        conn = int(match["conn"]) if match["conn"] else None
        text = match["text"]
        if text.startswith(("C->S", "S->C")):
            hex_line = lines[index].strip()
            index += 1
            assert hex_line.startswith("hex:"), f"frame line without hex: {line}"
            kind = "call" if text.startswith("C->S") else "reply"
            events.append(Event(kind, conn, bytes.fromhex(hex_line[4:].strip()), summary=text))
        elif text.startswith("NEW client connection"):
            events.append(Event("new", conn, summary=text))
        elif text.startswith("EOF from client"):
            events.append(Event("eof", conn, summary=text))
        elif text.startswith("CLOSE by server"):
            events.append(Event("close", conn, summary=text))
        elif kill := _KILL.search(text):
            events.append(Event("kill", None, pid=int(kill["pid"]), summary=text))
        else:
            raise AssertionError(f"unknown event in the recording: {line}")
    return events
