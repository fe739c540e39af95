"""``python -m lockd.floor``: the memory floor under a lockd daemon on one store, for ``lockd bench``.

Most of a lockd daemon's RSS is not lockd's: the interpreter, asyncio and the store's client library are
there before the first lease (on RADOS, librados connected is ~23 MiB, most of it shared-library pages).
This process starts exactly as the daemon does (same interpreter and flags, same prelude, so no ssl),
opens the same store through the same table (``lockd.stores.open_store``), connects on a worker thread and
then makes a renewal's store call (reading one lockspace's heartbeats) every renew interval for a few
intervals, in a lockspace of its own that it never writes, so it leaves nothing in the store. Then it
freezes and trims the heap as the daemon does after start-up and prints its RSS. ``lockd bench`` runs it
in the same run as the daemon it measures and reports the daemon's RSS minus this floor: what lockd's own
code and its leases cost.

Input (stdin, JSON): ``{"store": {...}, "host_id": "...", "renew_interval_s": 1.0, "renewals": 3}``.
Output (stdout, JSON): ``{"rss_mib": ..., "threads": ..., "lockd_modules": [...]}`` (what of lockd the floor
holds: the store's module and what it needs, never the lease manager or the servers).
"""

from __future__ import annotations

import lockd._daemon_prelude  # noqa: F401 - first, before asyncio: the same start as the daemon's

# isort: split
import asyncio
import gc
import json
import os
import secrets
import sys
from typing import Any

from lockd.memory import rss_mib, trim_heap
from lockd.stores import open_store


async def measure(request: dict[str, Any]) -> dict[str, Any]:
    store = open_store(request["store"], host_id=request["host_id"])
    lockspace = f"lockd-floor-{secrets.token_hex(4)}"  # never written: reads of it find nothing
    await asyncio.to_thread(store.connect)
    try:
        for _ in range(int(request.get("renewals", 3))):
            await asyncio.to_thread(store.read_heartbeats, lockspace)
            await asyncio.sleep(float(request.get("renew_interval_s", 1.0)))
        gc.freeze()
        trim_heap()
        return {"rss_mib": rss_mib(), "threads": len(os.listdir("/proc/self/task")),
                "lockd_modules": sorted(name for name in sys.modules if name.split(".")[0] == "lockd")}
    finally:
        await asyncio.to_thread(store.close)


def main() -> None:
    print(json.dumps(asyncio.run(measure(json.loads(sys.stdin.read())))), flush=True)


if __name__ == "__main__":
    main()
