"""tgtadm argv builders and parsers, on output captured from tgt 1.0.85 (tests/data/tgtadm/)."""

from __future__ import annotations

from pathlib import Path

from hvstore.tools.tgtadm import (
    TUNED_PARAMETERS,
    Tgtadm,
    error_line,
    free_tid,
    parse_accounts,
    parse_parameters,
    parse_targets,
    redact,
)

DATA = Path(__file__).parents[2] / "data" / "tgtadm"


def read(name: str) -> str:
    return (DATA / f"1.0.85-{name}.txt").read_text()


def test_targets_without_sessions() -> None:
    targets = parse_targets(read("show-targets"))
    assert [(t.tid, t.iqn, t.state) for t in targets] == [
        (1, "iqn.2026-11.org.hvstore:iscsi.vm1", "ready"),
        (3, "iqn.2026-11.org.hvstore:iscsi.vm-2", "ready"),
    ]
    first, second = targets
    assert first.sessions == ()
    assert first.acl == ("iqn.2026-11.org.hvstore:init.a",)
    assert first.accounts == ()
    assert second.acl == ("ALL",)
    assert second.accounts == ("chapuser",)
    controller, disk = first.luns
    assert (controller.lun, controller.kind, controller.backing_path) == (0, "controller", None)
    assert (disk.lun, disk.kind, disk.size_mb, disk.block_size) == (1, "disk", 67, 512)
    assert (disk.backing_path, disk.backing_type) == ("/tmp/tgtx/a.img", "rdwr")
    assert second.luns[1].size_mb == 34


def test_targets_with_sessions() -> None:
    by_iqn = {t.iqn: t for t in parse_targets(read("show-sessions"))}
    one = by_iqn["iqn.2026-11.org.hvstore:iscsi.vm1"]
    assert [(s.session_id, s.initiator) for s in one.sessions] == [(4, "iqn.2026-11.org.hvstore:init.a")]
    assert [(c.connection_id, c.address) for c in one.sessions[0].connections] == [(0, "127.0.0.1")]
    two = by_iqn["iqn.2026-11.org.hvstore:iscsi.vm-2"]
    assert [(s.session_id, s.initiator) for s in two.sessions] == [(5, "iqn.x:y"), (6, "iqn.x:z")]
    # the LUN section after the nexus section is still read
    assert [lun.lun for lun in two.luns] == [0, 1]


def test_empty_show_is_no_targets() -> None:
    assert parse_targets("") == []


def test_parameters_default_and_tuned() -> None:
    default = parse_parameters(read("show-tid-default"))
    tuned = parse_parameters(read("show-tid-tuned"))
    assert default["MaxXmitDataSegmentLength"] == "8192"
    assert default["InitialR2T"] == "Yes"
    assert {k: tuned[k] for k in TUNED_PARAMETERS} == TUNED_PARAMETERS


def test_accounts() -> None:
    assert parse_accounts(read("account-show")) == ["chapuser"]
    assert parse_accounts("Account list:\n") == []


def test_errors() -> None:
    assert error_line(read("error-no-target")) == "can't find the target"
    assert error_line(read("error-target-exists")) == "this target already exists"
    assert error_line("") == ""


def test_free_tid_fills_the_lowest_gap() -> None:
    targets = parse_targets(read("show-targets"))  # tids 1 and 3
    assert free_tid(targets) == 2
    assert free_tid([]) == 1


def test_argv_builders() -> None:
    tool = Tgtadm()
    assert tool.new_target(2, "iqn.x:y") == [
        "tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "new", "--tid", "2", "--targetname", "iqn.x:y"]
    assert tool.delete_target(2, force=True)[-3:] == ["--force", "--tid", "2"]
    assert Tgtadm(control_port=7).show_targets()[:3] == ["tgtadm", "-C", "7"]
    assert tool.new_lun(2, 1, "/d/v.img")[-6:] == ["--lun", "1", "--backing-store", "/d/v.img", "--bstype", "rdwr"]
    assert tool.new_lun(2, 1, "tcp:127.0.0.1:7000:vm-1", bstype="sheepdog")[-4:] == [
        "--backing-store", "tcp:127.0.0.1:7000:vm-1", "--bstype", "sheepdog"]
    assert tool.close_connection(2, 5, 0)[-6:] == ["--tid", "2", "--sid", "5", "--cid", "0"]


def test_redact_hides_the_password() -> None:
    argv = Tgtadm().new_account("u", "s3cret")
    assert "s3cret" in argv
    assert "s3cret" not in redact(argv, "s3cret")
