"""Finding zeros in data: import/export skip them so thin volumes and sparse files stay thin."""

from __future__ import annotations

ZERO_BLOCK = 64 << 10
_ZERO_BLOCK_BYTES = bytes(ZERO_BLOCK)


def zero_runs(data: bytes | memoryview, block: int = ZERO_BLOCK) -> list[tuple[int, int, bool]]:
    """Split ``data`` into (start, end, is_zero) runs of whole ``block``-sized pieces (the last may be
    shorter); adjacent pieces of the same kind are merged."""
    view = memoryview(data)
    zeros = _ZERO_BLOCK_BYTES if block == ZERO_BLOCK else bytes(block)
    runs: list[tuple[int, int, bool]] = []
    for start in range(0, len(view), block):
        end = min(start + block, len(view))
        is_zero = view[start:end] == zeros[: end - start]
        if runs and runs[-1][2] == is_zero:
            runs[-1] = (runs[-1][0], end, is_zero)
        else:
            runs.append((start, end, is_zero))
    return runs
