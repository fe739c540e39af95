"""The I/O benchmark's pure parts: fio's JSON (captured from real fio 3.33 runs in tests/unit/bench/data),
the fio and qemu-nbd command lines, profile selection, the median round and the ratios."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from hvstore.bench.fio import FioResult, fill_argv, nbd_target, parse_fio_json, profile_argv, rbd_target
from hvstore.bench.profiles import PROFILES, QUICK_PROFILES, select_profiles
from hvstore.bench.qemu_export import QemuNbdExport, nbd_uri, qemu_nbd_argv
from hvstore.bench.runner import ENGINE, Figure, median_figure, with_ratios
from hvstore.errors import BackendUnavailable, InvalidArgument

DATA = Path(__file__).resolve().parent / "data"
NBD_WRITE = DATA / "fio-nbd-randwrite-4k-qd32.json"  # --lat_percentiles=1, nbd engine banner first
LIBAIO_READ = DATA / "fio-libaio-randread-4k-qd1-clat-percentiles.json"  # percentiles under clat_ns only


def _side(path: Path, side: str) -> dict:
    text = path.read_text()
    return json.loads(text[text.index("{"):])["jobs"][0][side]


def test_parses_the_nbd_engine_output_with_its_banner() -> None:
    text = NBD_WRITE.read_text()
    assert text.startswith("fio: connected to NBD server")
    raw = _side(NBD_WRITE, "write")
    result = parse_fio_json(text, write=True)
    assert result.requests == raw["total_ios"]
    assert result.seconds == raw["runtime"] / 1000
    assert result.iops == round(raw["iops"], 1)
    assert result.mib_per_s == round(raw["bw_bytes"] / (1 << 20), 2)
    assert result.mean_latency_ms == round(raw["lat_ns"]["mean"] / 1e6, 4)
    assert result.p50_latency_ms == round(raw["lat_ns"]["percentile"]["50.000000"] / 1e6, 4)
    assert result.p99_latency_ms == round(raw["lat_ns"]["percentile"]["99.000000"] / 1e6, 4)
    assert result.p50_latency_ms <= result.p99_latency_ms


def test_percentiles_fall_back_to_completion_latency() -> None:
    raw = _side(LIBAIO_READ, "read")
    assert "percentile" not in raw["lat_ns"]
    result = parse_fio_json(LIBAIO_READ.read_text(), write=False)
    assert result.requests == raw["total_ios"]
    assert result.p99_latency_ms == round(raw["clat_ns"]["percentile"]["99.000000"] / 1e6, 4)


@pytest.mark.parametrize("text, message", [
    ("fio: engine nbd not loadable", "no JSON"),
    ('{"jobs": []}', "no write figures"),
])
def test_output_without_figures_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_fio_json(text, write=True)


def test_the_idle_side_of_a_job_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="no request"):
        parse_fio_json(NBD_WRITE.read_text(), write=False)  # the job only wrote


def test_a_failed_job_is_refused() -> None:
    text = NBD_WRITE.read_text()
    doc = json.loads(text[text.index("{"):])
    doc["jobs"][0]["error"] = 5
    with pytest.raises(InvalidArgument, match="error 5"):
        parse_fio_json(json.dumps(doc), write=True)


def test_profile_command_is_true_random_time_based_with_latency_percentiles() -> None:
    profile = next(p for p in PROFILES if p.name == "rand-read-4k-qd32")
    argv = profile_argv(nbd_target("nbd+unix:///disk?socket=/tmp/s"), profile, runtime_s=1.5)
    assert argv[0] == "fio"
    for option in ("--ioengine=nbd", "--uri=nbd+unix:///disk?socket=/tmp/s", "--rw=randread", "--bs=4096",
                   "--iodepth=32", "--runtime=1500ms", "--time_based", "--lat_percentiles=1",
                   "--output-format=json"):
        assert option in argv
    seq = next(p for p in PROFILES if p.name == "seq-write-1m")
    assert "--rw=write" in profile_argv(nbd_target("u"), seq, runtime_s=3) and seq.block_bytes == 1 << 20


def test_fill_writes_the_whole_volume_sequentially() -> None:
    argv = fill_argv(nbd_target("u"))
    assert "--rw=write" in argv and not any(a.startswith(("--runtime", "--size", "--time_based")) for a in argv)


def test_rbd_cross_check_turns_the_librbd_cache_off_as_cache_none_does() -> None:
    target = rbd_target(pool="p", image="img", user="admin", conf="/c.conf", keyring="/k")
    assert target.env == {"CEPH_CONF": "/c.conf", "CEPH_ARGS": "--rbd_cache=false", "CEPH_KEYRING": "/k"}
    assert "--rbdname=img" in target.options and "--clientname=admin" in target.options


def test_qemu_nbd_has_a_tuned_deployments_settings() -> None:
    argv = qemu_nbd_argv("rbd:pool/img:conf=/c", "raw", "/tmp/x/nbd.sock", aio="io_uring")
    assert argv[0] == "qemu-nbd" and argv[-1] == "rbd:pool/img:conf=/c"
    for option in ("--cache=none", "--aio=io_uring", "--discard=unmap", "--format=raw", "--persistent",
                   "--socket=/tmp/x/nbd.sock"):
        assert option in argv
    assert nbd_uri("/tmp/x/nbd.sock") == "nbd+unix:///disk?socket=/tmp/x/nbd.sock"


def test_profiles_cover_the_issue_and_write_before_reading() -> None:
    names = [p.name for p in PROFILES]
    assert {(p.block_bytes, p.depth, p.random) for p in PROFILES if p.block_bytes == 4096} == {
        (4096, 1, True), (4096, 32, True)}
    assert max(i for i, p in enumerate(PROFILES) if p.write) < min(i for i, p in enumerate(PROFILES) if not p.write)
    assert [p.name for p in select_profiles(list(reversed(QUICK_PROFILES)))] == [n for n in names
                                                                                 if n in QUICK_PROFILES]
    with pytest.raises(InvalidArgument, match="unknown profile"):
        select_profiles(["rand-write-8k"])


def test_median_round_and_ratios_against_the_baseline() -> None:
    runs = [parse_fio_json(NBD_WRITE.read_text(), write=True)]
    base = median_figure("baseline", "p", ENGINE, runs)
    slow = [replace(runs[0], iops=runs[0].iops / k, p99_latency_ms=runs[0].p99_latency_ms * k) for k in (4, 2, 8)]
    store = median_figure("ceph", "p", ENGINE, slow)
    assert store.measured == slow[0]  # iops / 4: the median of / 4, / 2, / 8
    assert store.rounds_iops == tuple(s.iops for s in slow)
    rated = with_ratios([base, store], {"p": base})
    assert rated[0].iops_vs_baseline == 1.0 and rated[0].p99_vs_baseline == 1.0
    assert rated[1].iops_vs_baseline == 0.25 and rated[1].p99_vs_baseline == 4.0
    orphan = Figure("x", "other", ENGINE, FioResult(1, 1.0, 1.0, 0.0, 1.0, None, None))
    assert with_ratios([orphan], {"p": base})[0].iops_vs_baseline is None


def test_a_figures_json_has_the_measured_fields_flat_between_the_labels_and_the_ratios() -> None:
    sample = parse_fio_json(NBD_WRITE.read_text(), write=True)
    figure = with_ratios([median_figure("baseline", "p", ENGINE, [sample])], {})[0]
    doc = figure.to_json()
    assert list(doc) == ["store", "profile", "engine", *asdict(sample), "rounds_iops", "iops_vs_baseline",
                         "p99_vs_baseline"]
    assert {key: doc[key] for key in asdict(sample)} == asdict(sample)
    assert doc["rounds_iops"] == [sample.iops] and json.loads(json.dumps(doc)) == doc


def test_an_export_qemu_nbd_cannot_open_fails_with_its_message_and_leaves_nothing(tmp_path: Path) -> None:
    before = set(Path(tempfile.gettempdir()).glob("hvstore-bench-nbd-*"))
    export = QemuNbdExport(str(tmp_path / "missing.raw"), "raw", aio="native")
    with pytest.raises(BackendUnavailable, match=r"qemu-nbd exited.*missing\.raw"):
        with export:
            pass
    assert set(Path(tempfile.gettempdir()).glob("hvstore-bench-nbd-*")) == before
