"""The pure lease state machine, driven by explicit clock values (nothing here sleeps)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockd.errors import InvalidRequest, ProtocolError
from lockd.lease import (
    Busy,
    Grant,
    Heartbeat,
    HostState,
    LeaseTiming,
    LivenessTracker,
    Mode,
    Owner,
    RenewalDeadline,
    Resource,
    TakeOver,
    decide_acquire,
    decide_release,
    validate_host_id,
    validate_key,
    validate_lockspace,
)

TTL = 8.0
A = Owner("hosta", "inc-a")
B = Owner("hostb", "inc-b")
C = Owner("hostc", "inc-c")


def hb(owner: Owner, counter: int, *, ttl_s: float = TTL, evicted_by: str | None = None) -> Heartbeat:
    return Heartbeat(owner.host, owner.incarnation, counter, ttl_s, evicted_by)


def read(tracker: LivenessTracker, at: float, *beats: Heartbeat, duration: float = 0.0) -> None:
    tracker.observe(beats, read_started=at, read_finished=at + duration)


# ------------------------------------------------------------------------------------------- names, codecs

@pytest.mark.parametrize("name", ["hosta", "host-1.example", "a", "x" * 128, "ceph:pool@ns"])
def test_valid_names(name: str) -> None:
    assert validate_host_id(name) == name
    assert validate_lockspace(name) == name


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 129, "é"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_host_id(name)
    with pytest.raises(InvalidRequest):
        validate_lockspace(name)


@pytest.mark.parametrize("key", ["", "a\x00b", "x" * 1025, "tab\there"])
def test_invalid_keys(key: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_key(key)


def test_key_may_be_a_path_or_a_hash() -> None:
    assert validate_key("vm-1/disk 0.qcow2") == "vm-1/disk 0.qcow2"
    assert validate_key("f" * 64) == "f" * 64


text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=30)
owners = st.builds(Owner, text.filter(lambda s: "/" not in s), text)


@given(st.builds(Heartbeat, text, text, st.integers(0, 2**62), st.floats(0.1, 1e6),
                 st.none() | text, text))
def test_heartbeat_round_trip(beat: Heartbeat) -> None:
    assert Heartbeat.decode(beat.encode()) == beat
    assert Heartbeat.decode(beat.encode().encode()) == beat


@given(st.builds(Resource, text, st.sampled_from(Mode), st.lists(owners, max_size=5).map(tuple),
                 st.integers(0, 2**62)))
def test_resource_round_trip(record: Resource) -> None:
    assert Resource.decode(record.encode()) == record


def test_renewal_bumps_the_counter_and_may_advertise_a_new_client() -> None:
    beat = Heartbeat("hosta", "inc", 4, TTL, client="127.0.0.1:0/1")
    assert beat.renewed() == Heartbeat("hosta", "inc", 5, TTL, client="127.0.0.1:0/1")
    assert beat.renewed(client="127.0.0.1:0/2").client == "127.0.0.1:0/2"


def test_encoding_is_canonical() -> None:
    # Stores compare these bytes in compare-and-swap: equal records must encode identically.
    assert hb(A, 3).encode() == Heartbeat.decode(hb(A, 3).encode()).encode()
    assert " " not in hb(A, 3).encode()


@pytest.mark.parametrize("raw", ["", "{}", "[]", '{"host":"a"}', "not json", '{"key":"k","mode":"x",'
                                 '"holders":[],"token":1}', '{"key":"k","mode":"shared","holders":["nohost"],'
                                 '"token":1}'])
def test_malformed_records_are_protocol_errors(raw: str) -> None:
    with pytest.raises(ProtocolError):
        Heartbeat.decode(raw)
    with pytest.raises(ProtocolError):
        Resource.decode(raw)


# ------------------------------------------------------------------------------------------- timing

def test_default_timing_is_valid() -> None:
    timing = LeaseTiming()
    assert timing.self_fence_after_s == timing.ttl_s - timing.margin_s


@pytest.mark.parametrize(("ttl", "interval", "margin"), [(8, 1, 0), (8, 1, 8), (8, 4, 2), (8, 0, 2), (2, 1, 1)])
def test_invalid_timing(ttl: float, interval: float, margin: float) -> None:
    with pytest.raises(InvalidRequest):
        LeaseTiming(ttl_s=ttl, renew_interval_s=interval, margin_s=margin)


# ------------------------------------------------------------------------------------------- liveness

def test_fresh_observer_declares_nobody_dead_before_a_ttl() -> None:
    tracker = LivenessTracker(TTL)
    read(tracker, 100.0, hb(A, 5))
    read(tracker, 107.9, hb(A, 5))
    assert tracker.liveness(A, 107.9).state == HostState.UNCONFIRMED
    assert tracker.liveness(B, 107.9).state == HostState.UNCONFIRMED  # never seen at all
    read(tracker, 108.0, hb(A, 5))
    assert tracker.liveness(A, 108.0).state == HostState.DEAD
    assert tracker.liveness(B, 108.0).state == HostState.DEAD


def test_renewing_host_is_alive_and_never_dead() -> None:
    tracker = LivenessTracker(TTL)
    for i in range(40):
        read(tracker, 100.0 + i, hb(A, i))
    state = tracker.liveness(A, 139.5)
    assert state.state == HostState.ALIVE
    assert state.dead_in_s == pytest.approx(TTL - 0.5)


def test_a_change_counts_from_the_end_of_the_read_and_unchanged_from_the_start() -> None:
    tracker = LivenessTracker(TTL)
    read(tracker, 100.0, hb(A, 1), duration=2.0)     # first seen at 102 (read end)
    read(tracker, 109.5, hb(A, 1), duration=1.0)     # started only 7.5 s after 102
    assert not tracker.liveness(A, 110.5).dead
    read(tracker, 110.0, hb(A, 1), duration=5.0)     # started 8 s after 102
    assert tracker.liveness(A, 115.0).state == HostState.DEAD


def test_a_later_change_resets_the_clock() -> None:
    tracker = LivenessTracker(TTL)
    read(tracker, 100.0, hb(A, 1))
    read(tracker, 107.0, hb(A, 2))
    read(tracker, 114.0, hb(A, 2))
    assert not tracker.liveness(A, 114.0).dead
    read(tracker, 115.0, hb(A, 2))
    assert tracker.liveness(A, 115.0).dead


def test_evicted_heartbeat_is_dead_at_once() -> None:
    tracker = LivenessTracker(TTL)
    read(tracker, 100.0, hb(A, 1))
    read(tracker, 100.5, hb(A, 1, evicted_by=str(B)))
    assert tracker.liveness(A, 100.5).state == HostState.EVICTED
    assert tracker.liveness(A, 100.5).dead


def test_old_incarnation_dies_a_ttl_after_its_last_change() -> None:
    tracker = LivenessTracker(TTL)
    old = Owner("hosta", "old")
    read(tracker, 100.0, hb(old, 4))
    read(tracker, 101.0, hb(A, 0))  # the host re-joined with a new incarnation
    assert tracker.liveness(old, 101.0).state == HostState.UNCONFIRMED
    assert not tracker.liveness(old, 101.0).current
    read(tracker, 108.0, hb(A, 7))
    assert tracker.liveness(old, 108.0).state == HostState.DEAD
    assert tracker.liveness(A, 108.0).state == HostState.ALIVE


def test_a_longer_ttl_announced_by_the_host_is_honoured() -> None:
    tracker = LivenessTracker(TTL)
    read(tracker, 100.0, hb(A, 1, ttl_s=20.0))
    read(tracker, 110.0, hb(A, 1, ttl_s=20.0))
    assert not tracker.liveness(A, 110.0).dead
    read(tracker, 120.0, hb(A, 1, ttl_s=20.0))
    assert tracker.liveness(A, 120.0).dead


def test_hosts_lists_current_incarnations_sorted() -> None:
    tracker = LivenessTracker(TTL)
    read(tracker, 1.0, hb(B, 1), hb(A, 1))
    assert [h.owner for h in tracker.hosts(1.0)] == [A, B]
    assert tracker.heartbeat("hosta") == hb(A, 1)
    assert tracker.heartbeat("nobody") is None


def test_forget_dead_keeps_verdicts() -> None:
    tracker = LivenessTracker(TTL)
    old = Owner("hosta", "old")
    read(tracker, 0.0, hb(old, 1))
    read(tracker, 1.0, hb(A, 1))
    read(tracker, 100.0, hb(A, 1))
    tracker.forget_dead(100.0, keep_s=50.0)
    assert tracker.liveness(old, 100.0).dead


def test_observe_rejects_reads_that_end_before_they_start() -> None:
    with pytest.raises(ValueError):
        LivenessTracker(TTL).observe([], read_started=2.0, read_finished=1.0)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), margin=st.floats(0.1, 3.0))
def test_death_is_declared_only_after_the_holders_self_fence_deadline(data: st.DataObject,
                                                                      margin: float) -> None:
    """Safety: whenever an observer judges the holder dead, every renewal visible at the deciding read
    started early enough that the holder's self-fence deadline (start + TTL - margin) has passed by the
    start of that read (less margin). Renewals not yet visible are excluded by the eviction CAS."""
    # Holder renewals: start times, each write lands (becomes visible) some time after its start.
    starts = sorted(data.draw(st.lists(st.floats(0, 60), max_size=20)))
    writes = [(s + data.draw(st.floats(0, 3)), s, i + 1) for i, s in enumerate(starts)]
    writes.sort()
    # Observer reads at arbitrary times with arbitrary durations; linearization point inside each read.
    read_starts = sorted(data.draw(st.lists(st.floats(0, 80), min_size=1, max_size=40)))
    tracker = LivenessTracker(TTL)
    for rs in read_starts:
        duration = data.draw(st.floats(0, 2))
        point = rs + data.draw(st.floats(0, 1)) * duration
        visible = [w for w in writes if w[0] <= point]
        counter = max((c for _, _, c in visible), default=0)
        tracker.observe([hb(A, counter)], read_started=rs, read_finished=rs + duration)
        if tracker.liveness(A, rs + duration).dead:
            for _, start, _ in visible:
                holder_deadline = start + TTL - margin
                assert holder_deadline <= rs - margin + 1e-9


# ------------------------------------------------------------------------------------------- acquire

def alive(owner: Owner) -> object:
    tracker = LivenessTracker(TTL)
    for i in range(3):
        read(tracker, float(i), hb(owner, i))
    return lambda o: tracker.liveness(o, 2.5)


def dead_after(tracker_beats: list[Heartbeat], now: float) -> object:
    tracker = LivenessTracker(TTL)
    read(tracker, 0.0, *tracker_beats)
    read(tracker, now, *tracker_beats)
    return lambda o: tracker.liveness(o, now)


def test_acquire_free_takes_it_with_token_plus_one() -> None:
    decision = decide_acquire(None, "disk", A, Mode.EXCLUSIVE, alive(B))
    assert decision == Grant(Resource("disk", Mode.EXCLUSIVE, (A,), 1))
    released = Resource("disk", Mode.EXCLUSIVE, (), 7)
    assert decide_acquire(released, "disk", A, Mode.SHARED, alive(B)) == Grant(Resource("disk", Mode.SHARED,
                                                                                      (A,), 8))


def test_acquire_again_is_idempotent() -> None:
    record = Resource("disk", Mode.EXCLUSIVE, (A,), 3)
    assert decide_acquire(record, "disk", A, Mode.EXCLUSIVE, alive(B)) == Grant(record, unchanged=True)


def test_mode_change_of_sole_holder() -> None:
    record = Resource("disk", Mode.SHARED, (A,), 3)
    assert decide_acquire(record, "disk", A, Mode.EXCLUSIVE, alive(B)) == Grant(
        Resource("disk", Mode.EXCLUSIVE, (A,), 4))


def test_exclusive_held_by_live_host_is_busy_at_once() -> None:
    record = Resource("disk", Mode.EXCLUSIVE, (B,), 3)
    decision = decide_acquire(record, "disk", A, Mode.EXCLUSIVE, alive(B))
    assert isinstance(decision, Busy)
    assert decision.holders == (B,)
    assert "hostb" in decision.reason and "alive" in decision.reason
    assert decision.retry_after_s is not None and 0 < decision.retry_after_s <= TTL


def test_shared_joins_shared_but_not_exclusive() -> None:
    shared = Resource("disk", Mode.SHARED, (B,), 3)
    assert decide_acquire(shared, "disk", A, Mode.SHARED, alive(B)) == Grant(
        Resource("disk", Mode.SHARED, (A, B), 4))
    assert isinstance(decide_acquire(shared, "disk", A, Mode.EXCLUSIVE, alive(B)), Busy)
    exclusive = Resource("disk", Mode.EXCLUSIVE, (B,), 3)
    assert isinstance(decide_acquire(exclusive, "disk", A, Mode.SHARED, alive(B)), Busy)


def test_unconfirmed_holder_is_busy_with_time_until_it_can_be_dead() -> None:
    record = Resource("disk", Mode.EXCLUSIVE, (B,), 3)
    tracker = LivenessTracker(TTL)
    read(tracker, 10.0, hb(B, 1))
    read(tracker, 15.0, hb(B, 1))
    decision = decide_acquire(record, "disk", A, Mode.EXCLUSIVE, lambda o: tracker.liveness(o, 15.0))
    assert isinstance(decision, Busy)
    assert decision.retry_after_s == pytest.approx(3.0)
    assert "not renewing" in decision.reason


def test_dead_holder_is_taken_over() -> None:
    record = Resource("disk", Mode.EXCLUSIVE, (B,), 3)
    decision = decide_acquire(record, "disk", A, Mode.EXCLUSIVE, dead_after([hb(B, 1)], TTL))
    assert isinstance(decision, TakeOver)
    assert [v.owner for v in decision.victims] == [B]
    assert decision.record == Resource("disk", Mode.EXCLUSIVE, (A,), 4)


def test_takeover_needs_every_conflicting_holder_dead() -> None:
    record = Resource("disk", Mode.SHARED, (B, C), 3)
    tracker = LivenessTracker(TTL)
    for t in range(12):
        read(tracker, float(t), hb(B, 1), hb(C, t))
    decision = decide_acquire(record, "disk", A, Mode.EXCLUSIVE, lambda o: tracker.liveness(o, 11.0))
    assert isinstance(decision, Busy) and decision.holders == (C,)
    read(tracker, 30.0, hb(B, 1), hb(C, 11))
    decision = decide_acquire(record, "disk", A, Mode.EXCLUSIVE, lambda o: tracker.liveness(o, 30.0))
    assert isinstance(decision, TakeOver)
    assert {v.owner for v in decision.victims} == {B, C}


def test_release() -> None:
    record = Resource("disk", Mode.SHARED, (A, B), 5)
    assert decide_release(record, A) == Resource("disk", Mode.SHARED, (B,), 6)
    assert decide_release(record, C) is None
    assert decide_release(None, A) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B, C]), st.sampled_from(["acquire", "release"]),
                          st.sampled_from(Mode)), max_size=60))
def test_record_sequences_keep_exclusion_and_tokens_grow(steps: list[tuple[Owner, str, Mode]]) -> None:
    """Any interleaving of acquires/releases by live hosts: an exclusive record has one holder, every
    write raises the token, and a grant never displaces a live holder."""
    liveness = alive(A)  # everybody other than A is unconfirmed: never dead
    record: Resource | None = None
    for owner, verb, mode in steps:
        before = record
        if verb == "acquire":
            decision = decide_acquire(record, "k", owner, mode, liveness)
            assert not isinstance(decision, TakeOver)
            if isinstance(decision, Grant):
                record = decision.record
        else:
            record = decide_release(record, owner) or record
        if record is not None:
            if record.mode == Mode.EXCLUSIVE:
                assert len(record.holders) <= 1
            if before is not None and record != before:
                assert record.token == before.token + 1
                # holders that were there and did not release are still there
                kept = set(before.holders) - ({owner} if verb == "release" else set())
                assert kept <= set(record.holders)


# ------------------------------------------------------------------------------------------- self-fence

def test_deadline_counts_from_the_start_of_the_acked_renewal() -> None:
    timing = LeaseTiming(ttl_s=8, renew_interval_s=1, margin_s=2)
    deadline = RenewalDeadline(timing)
    assert deadline.deadline is None and not deadline.expired(1e9)
    assert deadline.acknowledged(started_at=10.0, acked_at=13.0)
    assert deadline.deadline == 16.0
    assert deadline.remaining_s(15.0) == pytest.approx(1.0)
    assert not deadline.expired(15.99)
    assert deadline.expired(16.0)


def test_late_ack_does_not_undo_expiry() -> None:
    deadline = RenewalDeadline(LeaseTiming())
    deadline.acknowledged(started_at=0.0, acked_at=0.1)
    assert not deadline.acknowledged(started_at=5.0, acked_at=6.5)  # deadline 6.0 passed
    assert deadline.expired(6.5) and deadline.deadline == 6.0
    assert deadline.remaining_s(6.5) == 0.0
    deadline.reset()
    assert deadline.deadline is None and not deadline.expired(100.0)


def test_an_older_ack_arriving_late_does_not_move_the_deadline_back() -> None:
    deadline = RenewalDeadline(LeaseTiming())
    deadline.acknowledged(started_at=3.0, acked_at=3.1)
    deadline.acknowledged(started_at=2.0, acked_at=3.2)
    assert deadline.last_acked_start == 3.0


def test_ack_before_start_is_a_bug() -> None:
    with pytest.raises(ValueError):
        RenewalDeadline(LeaseTiming()).acknowledged(started_at=2.0, acked_at=1.0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 10)), max_size=30), st.floats(0, 120))
def test_deadline_never_exceeds_any_acked_start_plus_ttl_minus_margin(renewals: list[tuple[float, float]],
                                                                       now: float) -> None:
    timing = LeaseTiming()
    deadline = RenewalDeadline(timing)
    accepted: list[float] = []
    for start, delay in sorted(renewals):
        if deadline.acknowledged(start, start + delay):
            accepted.append(start)
    if accepted:
        assert deadline.deadline == max(accepted) + timing.self_fence_after_s
    if deadline.deadline is not None and now >= deadline.deadline:
        assert deadline.expired(now)
