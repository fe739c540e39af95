"""The lab's ``sheepdog`` store, served by a FAKE Sheepdog node — the real sheep cannot be installed here.

Sheepdog was archived upstream in 2016 and is packaged neither for Debian 12 nor on PyPI or npm, so the
lab runs ``python -m tests.fakes.sheepdog_fake`` (in memory, checked against a recorded sheep 1.0.1
session) on 127.0.0.1:7000 under the lab's reaper. Everything it holds is lost when it stops. Results
measured on this store describe the fake, not Sheepdog; point a store's ``address`` at a real cluster
for that (and run the tests with ``SHEEPDOG_ADDR``). Attach goes through the lab's tgtd (``tgt``
service): the store names its portal and control socket.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hvstore.errors import HvstoreError
from hvstore.lab.service import LabService, wait_until
from hvstore.lab.tgt import TgtService
from hvstore.protocols.sheepdog import SheepdogClient, SheepdogConnection

ADDRESS = "127.0.0.1"
PORT = 7000
STORE = "sheepdog"
START_TIMEOUT_S = 10.0
# the fake lives in the repository's tests package (installed with it: setup.cfg packages include tests)
REPO_ROOT = Path(__file__).resolve().parents[2]


class SheepdogFakeService(LabService):
    name = "sheepdog-fake"
    description = ("a FAKE Sheepdog node (tests/fakes/sheepdog_fake.py, in memory) on 127.0.0.1:7000; "
                   "the real sheep cannot be installed here")

    @property
    def process_names(self) -> tuple[str, ...]:
        return ("sheepdog-fake",)

    @property
    def address(self) -> str:
        return f"{ADDRESS}:{PORT}"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.lab.running("sheepdog-fake"):
            return
        self.lab.stop("sheepdog-fake")  # clear a stale pid record
        python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.lab.spawn("sheepdog-fake",
                       [sys.executable, "-m", "tests.fakes.sheepdog_fake", "--host", ADDRESS, "--port", str(PORT)],
                       env={"PYTHONPATH": python_path}, cwd=REPO_ROOT)
        wait_until(lambda: self.health()[0], timeout_s=START_TIMEOUT_S, what="the FAKE sheepdog node",
                   log=lambda: self.lab.log_tail("sheepdog-fake"))

    def health(self) -> tuple[bool, str]:
        try:
            with SheepdogConnection(self.address, timeout_s=1.0) as conn:
                client = SheepdogClient(conn)
                default = client.cluster_default()
                count = len(client.vdi_ids())
        except HvstoreError as exc:
            return False, str(exc)
        return True, f"FAKE sheepdog: {count} VDI id(s) in use, {default.nr_copies} copies by default"

    def stores(self) -> dict[str, dict[str, Any]]:
        tgt = TgtService(self.lab)
        return {STORE: {"type": "sheepdog", "address": self.address, "portal": tgt.address,
                        "control_socket": str(tgt.control_socket)}}
