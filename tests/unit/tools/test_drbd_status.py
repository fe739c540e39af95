"""drbd_status parsers on output captured from DRBD 8.4.11 in the lab's node VMs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hvstore.tools.drbd_status import parse_events2, split_brain_in_log

DATA = Path(__file__).parents[2] / "data" / "drbd"


def events(case: str) -> str:
    return (DATA / f"8.4.11-{case}.txt").read_text()


def test_connected_but_inconsistent_before_the_first_primary() -> None:
    state = parse_events2(events("connected-inconsistent"))["hv-3"]
    assert (state.role, state.connection, state.disk, state.peer_disk) == (
        "Secondary", "Connected", "Inconsistent", "Inconsistent")
    assert state.minor == 3 and state.size_kib == 65496 and state.out_of_sync_kib == 65496
    assert not state.both_up_to_date


def test_initial_sync_seen_from_both_sides() -> None:
    source = parse_events2(events("primary-syncsource"))["hv-3"]
    target = parse_events2(events("secondary-synctarget"))["hv-3"]
    assert (source.role, source.replication, source.disk) == ("Primary", "SyncSource", "UpToDate")
    assert (target.role, target.replication, target.disk, target.peer_role) == (
        "Secondary", "SyncTarget", "Inconsistent", "Primary")
    assert source.syncing and target.syncing
    assert 0 < target.out_of_sync_kib < target.size_kib


def test_up_to_date_on_both() -> None:
    state = parse_events2(events("primary-uptodate"))["hv-3"]
    assert state.both_up_to_date and not state.syncing and state.out_of_sync_kib == 0


def test_peer_down_shows_connecting_and_unknown_peer_disk() -> None:
    state = parse_events2(events("primary-peer-down"))["hv-3"]
    assert (state.connection, state.peer_disk, state.peer_role) == ("Connecting", "DUnknown", "Unknown")


def test_split_brain_leaves_standalone() -> None:
    state = parse_events2(events("split-brain-standalone"))["hv-3"]
    assert state.connection == "StandAlone" and state.out_of_sync_kib == 4


def test_empty_listing() -> None:
    assert parse_events2("exists -\n") == {}


def test_split_brain_found_in_the_kernel_log() -> None:
    log = events("dmesg-split-brain")
    assert split_brain_in_log(log, 3)
    assert not split_brain_in_log(log, 4)


@pytest.mark.parametrize("later", [
    "[  80.0] block drbd3: conn( WFReportParams -> Connected ) pdsk( DUnknown -> UpToDate )",
])
def test_a_later_connection_ends_the_split_brain(later: str) -> None:
    assert not split_brain_in_log(events("dmesg-split-brain") + later + "\n", 3)
