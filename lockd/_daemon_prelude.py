"""Imported first by ``lockd.daemon``: keeps TLS out of the long-running daemon process.

asyncio imports ``ssl`` at import time only to offer TLS. Nothing in lockd's daemon speaks TLS, and there the
module costs about 1.6 MiB of RSS (libssl, OpenSSL's tables and the ssl module's objects; measured with
librados loaded, which maps libcrypto anyway). So when this process *is* the daemon (``python -m
lockd.daemon``, what ``lockd serve`` execs), asyncio is imported with ``ssl`` hidden (asyncio then has no TLS
support) and ``ssl`` is unhidden again at once (the same for ``python -m lockd.floor``, which measures the memory
floor under the daemon and must start as it does), so a later ``import ssl`` (by a fencing backend, say) still
works. Every other process importing lockd.daemon (the CLI, tests, the report) is left alone.
"""

from __future__ import annotations

import sys

# The daemon, and the probe that measures the memory floor under it (it must start exactly as the daemon does).
DAEMON_MAIN_MODULES = ("lockd.daemon", "lockd.floor")


def _is_daemon_process() -> bool:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) in DAEMON_MAIN_MODULES


if _is_daemon_process() and "asyncio" not in sys.modules:
    sys.modules["ssl"] = None  # type: ignore[assignment]  # makes `import ssl` raise ImportError
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]
