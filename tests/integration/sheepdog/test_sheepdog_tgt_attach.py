"""Attach path of the sheepdog store: a real tgtd (tgt 1.0.85, ``--bstype sheepdog``) exporting VDIs of the
FAKE Sheepdog cluster as iSCSI LUNs, read and written by QEMU's own iSCSI initiator (qemu-img/qemu-io).

tgtd's sheepdog backing store is a second, independent client of the protocol (C, from the tgt project):
what it reads and writes through the fake must be what hvstore's client sees. A private tgtd (own control
socket and portal) keeps these tests apart from the lab's tgtd.
"""

from __future__ import annotations

import hashlib
import random
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hvstore.backends.sheepdog import SheepdogBackend, SheepdogConfig
from hvstore.errors import Busy
from hvstore.lab.service import Lab, wait_until
from hvstore.run import run
from hvstore.tools import tgtadm
from tests.fakes.sheepdog_fake import FakeSheepdogCluster, FakeSheepdogServer

MiB = 1 << 20


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _fake_node() -> FakeSheepdogServer:
    """A FAKE node on a 4-digit port: tgt 1.0.85's sheepdog store cannot connect to 5-digit ports (seen
    here: 7001 and 9000 work, 10000, 17000, 27001 and 38517 give "failed connect to 127.0.0.1:PORT")."""
    for port in random.sample(range(7100, 10000), 50):
        try:
            return FakeSheepdogServer(FakeSheepdogCluster(), port=port)
        except OSError:
            continue
    raise RuntimeError("no free port below 32768 for the FAKE sheepdog node")


@pytest.fixture(scope="module")
def tgtd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(portal, control socket) of a private tgtd, stopped (targets deleted, then shut down) afterwards."""
    root = tmp_path_factory.mktemp("tgtd")
    lab, control, portal = Lab(root), root / "ctl", f"127.0.0.1:{_free_port()}"
    env = tgtadm.env(str(control))
    lab.spawn("tgtd", ["tgtd", "-f", "--iscsi", f"portal={portal}"], env=env)

    def answers() -> bool:
        return run(tgtadm.Tgtadm().show_targets(), check=False, timeout_s=5, env=env).returncode == 0

    try:
        wait_until(answers, timeout_s=10, what="private tgtd", log=lambda: lab.log_tail("tgtd"))
        yield portal, control
    finally:
        for target in tgtadm.parse_targets(run(tgtadm.Tgtadm().show_targets(), check=False, env=env).stdout):
            run(tgtadm.Tgtadm().delete_target(target.tid, force=True), check=False, env=env)
        run(tgtadm.Tgtadm().shutdown(), check=False, env=env)
        lab.stop("tgtd")


@pytest.fixture
def backend(tgtd: tuple[str, Path]) -> Iterator[SheepdogBackend]:
    portal, control = tgtd
    with _fake_node() as server:
        config = SheepdogConfig.from_mapping("sd", {"address": server.address, "portal": portal,
                                                    "control_socket": str(control)})
        with SheepdogBackend("sd", config) as b:
            yield b
            for vol in b.list():
                b.delete(vol.name, force=True)


def test_qemu_reads_through_tgtd_what_hvstore_wrote(backend, tmp_path):
    data = hashlib.shake_256(b"sheep").digest(5 * MiB)
    backend.create("vm-1", 16 * MiB)
    with backend.open("vm-1", writable=True) as io:
        io.write(3 * MiB + 512, data)
    uri = backend.uri("vm-1")
    assert uri.endswith("/iqn.2026-11.org.hvstore.sheepdog:sd.vm-1/1")
    assert backend.uri("vm-1") == uri  # idempotent: one target
    out = tmp_path / "out.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-f", "raw", "-O", "raw", uri, str(out)], check=True)
    image = out.read_bytes()
    assert len(image) == 16 * MiB and image[3 * MiB + 512:8 * MiB + 512] == data
    assert image[:3 * MiB + 512] == bytes(3 * MiB + 512)


def test_qemu_writes_through_tgtd_copy_on_write_after_a_snapshot(backend):
    backend.create("vm-2", 16 * MiB)
    with backend.open("vm-2", writable=True) as io:
        io.write(0, b"A" * MiB)
    backend.snapshot("vm-2", "s1")
    done = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 512k 1M", "-c", "write -P 0x33 9M 64k",
                           backend.uri("vm-2")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    with backend.open("vm-2") as io:
        assert io.read(0, 512 * 1024) == b"A" * 512 * 1024
        assert io.read(512 * 1024, MiB) == b"\x5a" * MiB
        assert io.read(9 * MiB, 65536) == b"\x33" * 65536
    backend.clone("vm-2", "s1", "vm-2-old")
    with backend.open("vm-2-old") as io:  # the snapshot did not change
        assert io.read(0, MiB) == b"A" * MiB and io.read(9 * MiB, 4) == bytes(4)


def test_disk_xml_and_delete_of_an_exported_volume(backend):
    backend.create("vm-3", 4 * MiB)
    xml = backend.disk_xml("vm-3", target="vdb")
    assert "protocol='iscsi' name='iqn.2026-11.org.hvstore.sheepdog:sd.vm-3/1'" in xml
    assert "<target dev='vdb' bus='virtio'/>" in xml and "type='raw'" in xml
    target = backend.export("vm-3")
    lun = target.luns[-1]
    assert (lun.lun, lun.backing_type, lun.backing_path) == (1, "sheepdog", backend.tgt_backing_store("vm-3"))
    assert target.acl == tuple(backend.config.allowed_initiators)
    params = backend.tgtd.parameters(target.tid)
    assert {k: params[k] for k in tgtadm.TUNED_PARAMETERS} == tgtadm.TUNED_PARAMETERS
    backend.delete("vm-3")  # nobody logged in: the export goes with the volume
    assert backend._exported("vm-3") is None


def test_delete_refused_while_an_initiator_is_logged_in(backend):
    backend.create("vm-4", 4 * MiB)
    uri = backend.uri("vm-4")
    # qemu-io stays logged in while it waits on its stdin
    holder = subprocess.Popen(["qemu-io", "-f", "raw", uri], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: bool(backend._exported("vm-4").sessions), timeout_s=10, what="qemu-io login")
        with pytest.raises(Busy, match="in use through tgtd"):
            backend.delete("vm-4")
    finally:
        holder.communicate("quit\n", timeout=10)
    backend.delete("vm-4")


def test_reads_spanning_data_and_a_hole_are_right(backend, tmp_path):
    """tgt 1.0.85 zero-fills a hole at the start of its read buffer (a tgt bug); ``export`` allocates the
    holes first, so a request covering object 0 (data) and object 1 (never written) reads correctly."""
    backend.create("vm-5", 12 * MiB)
    with backend.open("vm-5", writable=True) as io:
        io.write(0, b"\x11" * (4 * MiB))
    local = tmp_path / "expected.raw"
    local.write_bytes(b"\x11" * (4 * MiB) + bytes(8 * MiB))
    uri = backend.uri("vm-5")
    done = subprocess.run(["qemu-io", "-f", "raw", "-c", f"read -v {4 * MiB - 16} 32", uri],
                          capture_output=True, text=True, check=True)
    dump = done.stdout.splitlines()
    assert dump[0].split()[1:17] == ["11"] * 16 and dump[1].split()[1:17] == ["00"] * 16
    subprocess.run(["qemu-img", "compare", "-U", "-f", "raw", "-F", "raw", str(local), uri], check=True)
    with backend.open("vm-5") as io:  # the allocated holes still read as zeros
        assert io.read(4 * MiB, 8 * MiB) == bytes(8 * MiB)


def test_a_granted_host_logs_in_with_its_own_initiator_and_others_do_not(backend):
    backend.create("vm-5", 4 * MiB)
    xml = backend.disk_xml("vm-5", host="hosta")
    assert "<initiator><iqn name='iqn.2026-11.org.hvstore:hosta'/></initiator>" in xml
    refused = run(["qemu-io", "-f", "raw", "-c", "read 0 4k", backend.uri("vm-5", host="hosta")], check=False)
    assert refused.returncode != 0 or "failed" in refused.stdout.lower()  # not in the ACL yet
    backend.grant("vm-5", host="hosta")
    backend.grant("vm-5", host="hosta")  # idempotent
    assert backend.export("vm-5").acl.count("iqn.2026-11.org.hvstore:hosta") == 1
    done = run(["qemu-io", "-f", "raw", "-c", "write -P 0x42 0 4k", "-c", "read -P 0x42 0 4k",
                backend.uri("vm-5", host="hosta")])
    assert "Pattern verification failed" not in done.stdout
