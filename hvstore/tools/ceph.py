"""Pure helpers for Ceph's text formats: cephx keys, keyrings, ceph.conf, mon_host, QEMU rbd specs.

Text in, data out (or data in, text out): nothing here touches the network, a file or a process, so
the lab (which writes these files) and the rbd backend (which reads them) share one tested definition.
"""

from __future__ import annotations

import base64
import os
import re
import struct
import time
from collections.abc import Callable, Mapping

# CryptoKey::encode in src/auth/Crypto.cc: u16 type (1 = AES), utime_t created (u32 s, u32 ns),
# u16 secret length, secret. ceph-authtool --gen-key writes exactly this, base64-encoded.
_CEPH_CRYPTO_AES = 1
_SECRET_LEN = 16


def new_cephx_key(*, random_bytes: Callable[[int], bytes] = os.urandom,
                  now_s: Callable[[], float] = time.time) -> str:
    """A fresh cephx secret as ``ceph-authtool --gen-key`` prints it (``AQ...==``)."""
    created = now_s()
    seconds = int(created)
    nanoseconds = int((created - seconds) * 1e9)
    header = struct.pack("<HIIH", _CEPH_CRYPTO_AES, seconds, nanoseconds, _SECRET_LEN)
    return base64.b64encode(header + random_bytes(_SECRET_LEN)).decode()


def is_cephx_key(text: str) -> bool:
    """True if ``text`` decodes as an AES cephx key (what the mon will accept)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return False
    if len(raw) != 12 + _SECRET_LEN:
        return False
    kind, _s, _ns, length = struct.unpack("<HIIH", raw[:12])
    return kind == _CEPH_CRYPTO_AES and length == _SECRET_LEN


def render_keyring(entity: str, key: str, caps: Mapping[str, str] | None = None) -> str:
    """One keyring section, e.g. ``render_keyring("client.hostb", key, {"mon": "profile rbd"})``."""
    lines = [f"[{entity}]", f"\tkey = {key}"]
    lines.extend(f'\tcaps {service} = "{cap}"' for service, cap in (caps or {}).items())
    return "\n".join(lines) + "\n"


def render_conf(sections: Mapping[str, Mapping[str, object]]) -> str:
    """ceph.conf text from ``{section: {option: value}}``; booleans become true/false."""
    out = []
    for section, options in sections.items():
        out.append(f"[{section}]")
        for key, value in options.items():
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            out.append(f"\t{key} = {text}")
        out.append("")
    return "\n".join(out)


def conf_value(conf_text: str, key: str, section: str = "global") -> str | None:
    """The value of ``key`` in ``section`` of a ceph.conf (spaces, dashes and underscores are equivalent
    in Ceph option names); None when absent. ``[global]`` is the default section."""
    wanted = _normalise_key(key)
    current = "global"
    for raw in conf_text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            continue
        name, sep, value = line.partition("=")
        if sep and current == section and _normalise_key(name) == wanted:
            return value.strip()
    return None


def _normalise_key(name: str) -> str:
    return re.sub(r"[\s_-]+", "_", name.strip().lower())


_ADDRVEC_ITEM = re.compile(r"^(?:(v1|v2|any):)?(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+)(?::(\d+))?(?:/\d+)?$")


def parse_mon_host(value: str) -> list[tuple[str, int]]:
    """Monitor (host, port) pairs for the legacy v1 protocol, which is what libvirt's ``<host>`` and
    QEMU's ``mon_host`` entries name.

    Accepts every form ceph.conf allows: ``127.0.0.1``, ``10.0.0.1:6789, 10.0.0.2``,
    ``[v2:127.0.0.1:3300,v1:127.0.0.1:6789]`` (one address vector per monitor), space/comma/semicolon
    separated. A monitor listed only by its v2 address is given the default v1 port 6789.
    """
    monitors: list[tuple[str, int]] = []
    for vector in _split_monitors(value):
        items = [i for i in vector.split(",") if i]
        v1: tuple[str, int] | None = None
        fallback: tuple[str, int] | None = None
        for item in items:
            match = _ADDRVEC_ITEM.match(item)
            if not match:
                raise ValueError(f"cannot parse monitor address {item!r} in mon_host {value!r}")
            proto, host, port = match.groups()
            host = host.strip("[]")
            if proto == "v2":
                fallback = fallback or (host, 6789)
            else:
                v1 = v1 or (host, int(port) if port else 6789)
        chosen = v1 or fallback
        if chosen and chosen not in monitors:
            monitors.append(chosen)
    if not monitors:
        raise ValueError(f"mon_host {value!r} names no monitor")
    return monitors


def _split_monitors(value: str) -> list[str]:
    """Split mon_host into one string per monitor; a ``[...]`` group is one monitor's address vector."""
    monitors, depth, current = [], 0, ""
    for char in value:
        if char == "[" and depth == 0 and not current.strip():
            depth, current = 1, ""
            continue
        if char == "]" and depth == 1:
            monitors.append(current)
            depth, current = 0, ""
            continue
        if depth == 0 and char in " ,;\t":
            if current.strip():
                monitors.append(current.strip())
            current = ""
            continue
        current += char
    if current.strip():
        monitors.append(current.strip())
    return monitors


def qemu_rbd_spec(pool: str, image: str, *, user: str, conf: str, keyring: str | None = None,
                  snapshot: str | None = None) -> str:
    """QEMU's legacy rbd filename: ``rbd:POOL/IMAGE[@SNAP]:id=USER:conf=PATH[:keyring=PATH]``.

    QEMU splits the spec on ``:`` and takes ``\\`` as an escape, so both are escaped in every part.
    """
    def esc(part: str) -> str:
        return part.replace("\\", "\\\\").replace(":", "\\:").replace("@", "\\@")

    spec = f"rbd:{esc(pool)}/{esc(image)}"
    if snapshot:
        spec += f"@{esc(snapshot)}"
    spec += f":id={esc(user)}:conf={esc(conf)}"
    if keyring:
        spec += f":keyring={esc(keyring)}"
    return spec
