"""Pure parts of the RBD data path: the extent set that decides which zero blocks need no write, and
zero-run detection (no cluster needed)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from hvstore.backends.rbd_io import ExtentSet
from hvstore.blocks import zero_runs


def test_extent_set_merges_touching_and_overlapping_ranges():
    extents = ExtentSet([(0, 10)])
    extents.add(10, 20)
    extents.add(30, 40)
    extents.add(35, 50)
    assert extents.ranges() == [(0, 20), (30, 50)]
    extents.add(15, 32)
    assert extents.ranges() == [(0, 50)]


def test_extent_set_overlaps_is_half_open():
    extents = ExtentSet([(100, 50)])  # [100, 150)
    assert not extents.overlaps(0, 100)
    assert extents.overlaps(0, 101)
    assert extents.overlaps(149, 200)
    assert not extents.overlaps(150, 200)
    assert not ExtentSet().overlaps(0, 1 << 40)


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 40)), max_size=20),
       st.integers(0, 240), st.integers(1, 40))
def test_extent_set_agrees_with_a_set_of_bytes(adds, start, length):
    extents, covered = ExtentSet(), set()
    for begin, size in adds:
        extents.add(begin, begin + size)
        covered.update(range(begin, begin + size))
    assert extents.overlaps(start, start + length) == bool(covered & set(range(start, start + length)))
    ranges = extents.ranges()
    assert {b for lo, hi in ranges for b in range(lo, hi)} == covered
    assert all(hi < lo2 for (_, hi), (lo2, _) in itertools.pairwise(ranges))  # merged, sorted


def test_zero_runs_splits_and_merges_blocks():
    block = 4
    data = bytes(8) + b"abcd" + b"ef\0\0" + bytes(4) + b"xy"
    assert zero_runs(data, block) == [(0, 8, True), (8, 16, False), (16, 20, True), (20, 22, False)]
    assert zero_runs(b"", block) == []
    assert zero_runs(bytes(10), block) == [(0, 10, True)]


def _zero_runs_byte_by_byte(data: bytes, block: int) -> list[tuple[int, int, bool]]:
    runs: list[tuple[int, int, bool]] = []
    for start in range(0, len(data), block):
        end = min(start + block, len(data))
        is_zero = all(b == 0 for b in data[start:end])
        if runs and runs[-1][2] == is_zero:
            runs[-1] = (runs[-1][0], end, is_zero)
        else:
            runs.append((start, end, is_zero))
    return runs


@given(st.lists(st.sampled_from([b"\0" * 3, b"\0" * 8, b"a", b"\0z\0", b"xyzw"]), max_size=12),
       st.integers(1, 9))
def test_zero_runs_agree_with_a_byte_by_byte_scan_for_bytes_and_memoryviews(pieces, block):
    data = b"".join(pieces)
    expected = _zero_runs_byte_by_byte(data, block)
    assert zero_runs(data, block) == expected
    assert zero_runs(memoryview(data), block) == expected
    assert zero_runs(memoryview(b"--" + data)[2:], block) == expected
