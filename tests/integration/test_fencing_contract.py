"""Data-path fencing contract: every backend whose capability table says it can fence passes the same test.

For each such backend a harness opens the volume the way a VM of a given host would (RBD: a process with
the image open as ``client.<host>``; iSCSI: a libiscsi session as the per-VM initiator ``initiator_for(host,
vm)``; Sheepdog: such a session through the VDI's tgt export as the host's initiator; DRBD: the node's own
``/dev/drbdN``). Then ``fence(volume, dead_host=..., keep_host=...)`` must stop the dead host's next write
(nothing of it lands), leave the keeper writing, and be idempotent. Backends that declare no fencing must
raise Unsupported. A backend that starts declaring fencing fails
``test_every_backend_that_declares_fencing_has_a_harness`` until it gets a harness here.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from hvstore.backends.base import Backend, BlockIO
from hvstore.backends.registry import BACKENDS
from hvstore.config import load_config
from hvstore.errors import Unsupported
from hvstore.lab import LabController
from hvstore.model import Feature
from hvstore.protocols.libiscsi import IscsiSession, Target
from tests.integration.conftest import LAB_STORES, lab_store

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
BLOCK = 4096


class CutOff(Exception):
    """The writer's storage client was refused: what fencing must achieve."""


class Writer(ABC):
    """One VM's storage client of a host, with the volume open, writing block 0."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Write ``data`` at offset 0 and make it durable; CutOff when the storage refuses the client."""

    @abstractmethod
    def close(self) -> None: ...


class Harness(ABC):
    kind: ClassVar[str]
    store: ClassVar[str]

    def backend(self, lab: LabController) -> Backend:
        return lab_store(lab, self.store).backend()

    def hosts(self, backend: Any) -> tuple[str, str]:
        """(dead host, keeper)."""
        return "hostb", "hosta"

    @abstractmethod
    def writer(self, backend: Any, volume: str, host: str) -> Writer: ...

    def before_keeper_writes(self, backend: Any, volume: str, keep: str) -> None:  # noqa: B027 - optional
        """What the taker does after the fence and before its VM writes (nothing where both can be open)."""


# -- RBD ------------------------------------------------------------------------------------------------
RBD_WRITER = """
import sys, rados, rbd
conf, keyring, user, pool, image_name = sys.argv[1:6]
cluster = rados.Rados(conffile=conf, name=f"client.{user}", conf={"keyring": keyring})
cluster.connect()
image = rbd.Image(cluster.open_ioctx(pool), image_name)
print("open", flush=True)
for line in sys.stdin:
    try:
        image.write(bytes.fromhex(line.strip()), 0)
        image.flush()
        print("ok", flush=True)
    except rbd.Error as exc:
        print(f"failed {getattr(exc, 'errno', '?')}", flush=True)
        break
"""


class RbdWriter(Writer):
    """A separate process, like QEMU: blocklisting is per client instance."""

    def __init__(self, argv: list[str]) -> None:
        self.refused = ""
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "open"

    def write(self, data: bytes) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        if self.refused:
            raise CutOff(f"already {self.refused}")  # the writer exits at its first failure
        self.process.stdin.write(data.hex() + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        if answer != "ok":
            self.refused = answer
            raise CutOff(answer)

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class RbdHarness(Harness):
    kind = "rbd"
    store = "ceph"

    def writer(self, backend: Any, volume: str, host: str) -> Writer:
        cfg = backend.config
        keyring = str(Path(cfg.host_keyring_dir) / f"ceph.client.{host}.keyring")
        return RbdWriter([sys.executable, "-c", RBD_WRITER, cfg.conf, keyring, host, cfg.pool, volume])


# -- iSCSI ----------------------------------------------------------------------------------------------
class IscsiWriter(Writer):
    def __init__(self, session: IscsiSession) -> None:
        self.session = session.login()

    def write(self, data: bytes) -> None:
        try:
            self.session.write_blocks(0, data)
        except Exception as exc:  # IscsiConnectionLost, LoginFailed: whichever comes first
            raise CutOff(f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.session.close()


class IscsiHarness(Harness):
    kind = "iscsi"
    store = "iscsi"

    def writer(self, backend: Any, volume: str, host: str) -> Writer:
        initiator = backend.initiator_for(host, f"vm-{uuid.uuid4().hex[:6]}")
        backend.allow(volume, initiator)
        target = Target(backend.config.portal, backend.info(volume).details["iqn"], 1)
        return IscsiWriter(IscsiSession(target, initiator=initiator, timeout_s=5, reconnect_retries=1))


# -- Sheepdog (through its tgt export, the only way QEMU reaches it) -------------------------------------
class SheepdogHarness(Harness):
    kind = "sheepdog"
    store = "sheepdog"

    def writer(self, backend: Any, volume: str, host: str) -> Writer:
        backend.grant(volume, host=host)  # what hvstore attach --host does
        target = Target(backend.config.portal, backend.export(volume).iqn, 1)
        return IscsiWriter(IscsiSession(target, initiator=backend.initiator_for(host), timeout_s=5,
                                        reconnect_retries=1))


# -- DRBD -----------------------------------------------------------------------------------------------
class DrbdWriter(Writer):
    def __init__(self, blockio: BlockIO) -> None:
        self.blockio = blockio

    def write(self, data: bytes) -> None:
        try:
            self.blockio.write(0, data)
            self.blockio.flush()
        except Exception as exc:  # a Secondary cannot open /dev/drbdN (8.4)
            raise CutOff(f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        pass


class DrbdHarness(Harness):
    kind = "drbd"
    store = "drbd"

    def backend(self, lab: LabController) -> Backend:
        lab.up(["drbd"])
        return load_config(lab.config_path).store(self.store).backend()

    def hosts(self, backend: Any) -> tuple[str, str]:
        first, second = backend.config.nodes  # create() makes the first node Primary
        return first, second

    def writer(self, backend: Any, volume: str, host: str) -> Writer:
        from hvstore.backends.drbd import AgentBlockIO

        size = backend.info(volume).size_bytes
        return DrbdWriter(AgentBlockIO(backend.nodes[host], backend.uri(volume), size, writable=True))

    def before_keeper_writes(self, backend: Any, volume: str, keep: str) -> None:
        backend.set_role(volume, keep, "primary")


HARNESSES: list[Harness] = [RbdHarness(), IscsiHarness(), SheepdogHarness(), DrbdHarness()]


def test_every_backend_that_declares_fencing_has_a_harness() -> None:
    declaring = {kind for kind, cls in BACKENDS.items() if cls.CAPABILITIES.supports(Feature.FENCING)}
    assert declaring == {h.kind for h in HARNESSES}


@pytest.fixture(params=HARNESSES, ids=[h.kind for h in HARNESSES])
def harness(request: pytest.FixtureRequest) -> Harness:
    return request.param


@pytest.fixture
def fencing_backend(harness: Harness, lab: LabController) -> Iterator[Any]:
    with harness.backend(lab) as backend:
        assert backend.kind == harness.kind
        yield backend


@pytest.fixture
def volume(fencing_backend: Any) -> Iterator[str]:
    name = f"fence-{uuid.uuid4().hex[:8]}"
    fencing_backend.create(name, 16 * MiB)
    yield name
    fencing_backend.delete(name, force=True)


def test_fence_stops_the_dead_hosts_writes_and_spares_the_keeper(harness: Harness, fencing_backend: Any,
                                                                   volume: str) -> None:
    dead, keep = harness.hosts(fencing_backend)
    dead_writer = harness.writer(fencing_backend, volume, dead)
    keeper = harness.writer(fencing_backend, volume, keep)  # the taker's VM opens the volume before the lease
    try:
        dead_writer.write(b"D" * BLOCK)
        result = fencing_backend.fence(volume, dead_host=dead, keep_host=keep)
        print(f"{harness.kind}: {result}")
        assert result.method != "none" and result.fenced and result.seconds >= 0
        with pytest.raises(CutOff):
            dead_writer.write(b"X" * BLOCK)
        harness.before_keeper_writes(fencing_backend, volume, keep)
        keeper.write(b"K" * BLOCK)
        with pytest.raises(CutOff):  # still cut off after the keeper took over
            dead_writer.write(b"X" * BLOCK)
        again = fencing_backend.fence(volume, dead_host=dead, keep_host=keep)  # idempotent
        assert again.method == result.method
        keeper.write(b"L" * BLOCK)
        with fencing_backend.open(volume) as blockio:
            assert blockio.read(0, BLOCK) == b"L" * BLOCK
    finally:
        dead_writer.close()
        keeper.close()


@pytest.mark.parametrize("harness", [h for h in HARNESSES if h.kind != "drbd"],  # every DRBD node has it
                         ids=lambda h: h.kind)
def test_fencing_a_host_that_has_nothing_open_cuts_nobody_off(harness: Harness, fencing_backend: Any,
                                                              volume: str) -> None:
    dead, keep = harness.hosts(fencing_backend)
    keeper = harness.writer(fencing_backend, volume, keep)
    try:
        result = fencing_backend.fence(volume, dead_host=dead, keep_host=keep)
        assert result.fenced == ()
        keeper.write(b"K" * BLOCK)
    finally:
        keeper.close()


@pytest.mark.parametrize("store", sorted(LAB_STORES))
def test_backends_without_fencing_say_so(lab: LabController, store: str) -> None:
    entry = lab_store(lab, store)
    with entry.backend() as backend:
        if backend.capabilities.supports(Feature.FENCING):
            assert backend.kind in {h.kind for h in HARNESSES}  # covered by the contract above
            return
        with pytest.raises(Unsupported, match=re.escape(backend.capabilities.features[Feature.FENCING].note)):
            backend.fence("any", dead_host="hostb", keep_host="hosta")
