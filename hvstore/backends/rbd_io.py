"""The data path of an RBD image as BlockIO (librbd via python3-rbd), used by import/export/verify.

Throughput comes from keeping the OSDs busy, as ``rbd import/export`` do with concurrent requests:
- writes are librbd aio writes with up to WRITE_WINDOW_BYTES in flight; ``write`` returns when the
  request is queued, ``flush`` waits for all of them and raises the first error;
- sequential reads are served by aio reads issued ahead along ``allocated_extents()``;
- like ``rbd import``'s ``--sparse-size``, zero blocks are not sent to ranges that already read as zeros
  (objects that did not exist when the image was opened, and that this handle has not written), so an
  import does not allocate what the source file left as holes inside a chunk. This needs the fast-diff
  feature (the object map says what exists at open); without it every byte is written.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Iterator

import rados
import rbd

from hvstore.backends.base import BlockIO
from hvstore.blocks import ZERO_BLOCK, zero_runs
from hvstore.errors import BackendUnavailable, HvstoreError, InvalidArgument

# 64 MiB in flight keeps a single OSD busy (16 x 4 MiB objects) without holding much memory.
WRITE_WINDOW_BYTES = 64 << 20
READ_AHEAD_REQUESTS = 8
# The hints ``rbd import/export`` give every request: data streams through once, so the OSDs need not
# keep it in their caches.
STREAM_FLAGS = rados.LIBRADOS_OP_FLAG_FADVISE_SEQUENTIAL | rados.LIBRADOS_OP_FLAG_FADVISE_NOCACHE
# Granularity of zero detection in writes (rbd import uses 4 KiB; larger blocks cost less Python time
# and lose little: a source's holes are rarely smaller).

UNAVAILABLE = (rados.TimedOut, rados.ConnectionShutdown, rados.NotConnected, rbd.ConnectionShutdown,
               rbd.Timeout)
_ESHUTDOWN, _ETIMEDOUT = 108, 110


class ExtentSet:
    """A set of byte ranges [start, end), kept merged and sorted; answers ``overlaps`` in O(log n)."""

    def __init__(self, extents: list[tuple[int, int]] | None = None) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for start, length in extents or []:
            self.add(start, start + length)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        # Every range touching [start, end) merges with it.
        first = bisect.bisect_left(self._ends, start)
        last = bisect.bisect_right(self._starts, end)
        if first < last:
            start = min(start, self._starts[first])
            end = max(end, self._ends[last - 1])
        self._starts[first:last] = [start]
        self._ends[first:last] = [end]

    def overlaps(self, start: int, end: int) -> bool:
        index = bisect.bisect_right(self._ends, start)
        return index < len(self._starts) and self._starts[index] < end

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))


class RbdBlockIO(BlockIO):
    """An open image (see the module docstring for how it pipelines)."""

    def __init__(self, image: rbd.Image, label: str, *, writable: bool) -> None:
        self._image = image
        self._label = label
        self._size = image.size()
        self._window = threading.Condition()
        self._in_flight_bytes = 0
        self._in_flight_spans: list[tuple[int, int]] = []
        self._first_error: BaseException | None = None
        self._read_ahead: dict[tuple[int, int], _PendingRead] = {}
        self._extents: list[tuple[int, int]] = []  # from allocated_extents(), guides read-ahead
        self._closed = False
        # Ranges that may hold data: allocated at open (incl. a parent's) or written through this handle.
        self._maybe_data: ExtentSet | None = None
        if writable and has_fast_diff(image):
            self._maybe_data = ExtentSet(self._diff_extents())

    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        self._check_range(offset, length)
        pending = self._read_ahead.pop((offset, length), None)
        if pending is None and self._read_ahead:
            self._drop_read_ahead()  # the caller jumped elsewhere: what was read ahead is useless
        # Read ahead along the path a sequential reader takes: the next chunk of the same length in
        # this extent, then the start of the next allocated extent (export walks allocated_extents()).
        position: tuple[int, int] | None = (offset, length)
        for _ in range(READ_AHEAD_REQUESTS):
            assert position is not None
            position = self._next_chunk(*position)
            if position is None:
                break
            if position not in self._read_ahead:
                self._read_ahead[position] = _PendingRead(self._image, *position)
        if pending is None:
            pending = _PendingRead(self._image, offset, length)
        try:
            return pending.result()
        except rbd.Error as exc:
            raise io_error(self._label, "read", exc) from None

    def write(self, offset: int, data: bytes) -> None:
        self._check_range(offset, len(data))
        self._drop_read_ahead()
        if self._maybe_data is None or len(data) < 2 * ZERO_BLOCK:
            self._submit(offset, data)
            return
        for start, end, is_zero in zero_runs(data):
            if is_zero and not self._maybe_data.overlaps(offset + start, offset + end):
                continue  # reads as zeros already
            self._submit(offset + start, data if (start, end) == (0, len(data)) else data[start:end])

    def flush(self) -> None:
        with self._window:
            self._window.wait_for(lambda: self._in_flight_bytes == 0)
            error, self._first_error = self._first_error, None
        if error is not None:
            raise io_error(self._label, "write", error)
        try:
            self._image.flush()
        except rbd.Error as exc:
            raise io_error(self._label, "flush", exc) from None

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._drop_read_ahead()
            self.flush()
        finally:
            self._closed = True
            self._image.close()

    def allocated_extents(self) -> Iterator[tuple[int, int]]:
        """Allocated ranges (including a clone's parent data), merged and sorted; object granularity
        with fast-diff, byte granularity without."""
        self._extents = self._diff_extents()
        yield from self._extents

    # -- private ------------------------------------------------------------------------------------
    def _submit(self, offset: int, data: bytes) -> None:
        size = len(data)
        if self._maybe_data is not None:
            self._maybe_data.add(offset, offset + size)
        span = (offset, offset + size)

        def overlaps_in_flight() -> bool:
            return any(start < span[1] and span[0] < end for start, end in self._in_flight_spans)

        with self._window:
            # librbd does not order concurrent aio writes to overlapping ranges (a test saw the older of
            # two land last): a write that overlaps one in flight waits for it.
            self._window.wait_for(lambda: self._in_flight_bytes < WRITE_WINDOW_BYTES and not overlaps_in_flight())
            self._raise_first_error()
            self._in_flight_bytes += size
            self._in_flight_spans.append(span)

        def done(completion: rbd.Completion) -> None:
            ret = completion.get_return_value()
            with self._window:
                if ret < 0 and self._first_error is None:
                    self._first_error = OSError(-ret, f"write at {offset} failed (errno {-ret})")
                self._in_flight_bytes -= size
                self._in_flight_spans.remove(span)
                self._window.notify_all()

        try:
            self._image.aio_write(data, offset, done, STREAM_FLAGS)
        except rbd.Error as exc:
            with self._window:
                self._in_flight_bytes -= size
                self._in_flight_spans.remove(span)
            raise io_error(self._label, "write", exc) from None

    def _diff_extents(self) -> list[tuple[int, int]]:
        extents: list[list[int]] = []

        def collect(offset: int, length: int, exists: bool) -> int:
            if exists:
                if extents and extents[-1][0] + extents[-1][1] == offset:
                    extents[-1][1] += length
                else:
                    extents.append([offset, length])
            return 0

        try:
            self._image.diff_iterate(0, self._size, None, collect, include_parent=True,
                                     whole_object=has_fast_diff(self._image))
        except rbd.Error as exc:
            raise io_error(self._label, "map the allocation of", exc) from None
        extents.sort()
        return [(offset, min(length, self._size - offset)) for offset, length in extents]

    def _next_chunk(self, offset: int, length: int) -> tuple[int, int] | None:
        """Where a sequential reader of ``length``-byte chunks reads after ``offset``."""
        next_offset = offset + length
        for start, extent_length in self._extents or [(0, self._size)]:
            end = start + extent_length
            if end <= next_offset or length == 0:
                continue
            chunk_start = max(start, next_offset)
            return chunk_start, min(length, end - chunk_start)
        return None

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise InvalidArgument(f"{self._label}: range {offset}+{length} outside the volume ({self._size} bytes)")

    def _raise_first_error(self) -> None:
        if self._first_error is not None:
            error, self._first_error = self._first_error, None
            raise io_error(self._label, "write", error)

    def _drop_read_ahead(self) -> None:
        for pending in self._read_ahead.values():
            with contextlib.suppress(rbd.Error):
                pending.result()
        self._read_ahead.clear()


class _PendingRead:
    """One aio read; ``result()`` waits for it."""

    def __init__(self, image: rbd.Image, offset: int, length: int) -> None:
        self._done = threading.Event()
        self._data = b""
        self._ret = 0
        self.offset, self.length = offset, length
        image.aio_read(offset, length, self._complete, STREAM_FLAGS)

    def _complete(self, completion: rbd.Completion, data: bytes | None) -> None:
        self._ret = completion.get_return_value()
        self._data = data or b""
        self._done.set()

    def result(self) -> bytes:
        self._done.wait()
        if self._ret < 0:
            raise rbd.IOError(f"read at {self.offset} failed (errno {-self._ret})")
        if len(self._data) < self.length:  # librbd may return short past a parent's overlap
            return self._data + bytes(self.length - len(self._data))
        return self._data


def has_fast_diff(image: rbd.Image) -> bool:
    return bool(image.features() & rbd.RBD_FEATURE_FAST_DIFF)


def reason(exc: BaseException) -> str:
    """The first line of a librados/librbd exception's text."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def io_error(label: str, verb: str, exc: BaseException) -> HvstoreError:
    if isinstance(exc, UNAVAILABLE) or getattr(exc, "errno", None) in (_ESHUTDOWN, _ETIMEDOUT):
        return BackendUnavailable(f"cannot {verb} {label}: Ceph cut this client off or did not answer "
                                  f"({reason(exc)})")
    return HvstoreError(f"cannot {verb} {label}: {reason(exc)}")
