"""Shared pytest hooks."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings

from lockd.owners import end_stand_in, spawn_stand_in

LARGE_BYTES = 4096

# Hypothesis' default 200 ms deadline per example is a timed assertion: on a loaded 2-core machine it fails
# tests whose subject is correctness, not speed (seen once on the sheepdog bitmap round trip).
settings.register_profile("hvstore", deadline=None)
settings.load_profile("hvstore")


@pytest.fixture
def spawn_owner() -> Iterator[Callable[[], subprocess.Popen[Any]]]:
    """Start processes standing for lease owners (``sleep``, dying with the test process); ended after the test."""
    children: list[subprocess.Popen[Any]] = []

    def start() -> subprocess.Popen[Any]:
        child = spawn_stand_in(("sleep", "600"))
        children.append(child)
        return child

    yield start
    for child in children:
        end_stand_in(child)


def pytest_assertrepr_compare(op: str, left: Any, right: Any) -> list[str] | None:
    """Explain a failed comparison of large byte strings by the first differing offset.

    pytest's default diff of two 1 MiB byte strings runs difflib for minutes; volume tests compare MiBs.
    """
    if op != "==" or not isinstance(left, bytes | bytearray) or not isinstance(right, bytes | bytearray):
        return None
    if max(len(left), len(right)) < LARGE_BYTES:
        return None
    first = next((i for i, (a, b) in enumerate(zip(left, right, strict=False)) if a != b), min(len(left), len(right)))
    return [
        f"{len(left)} bytes == {len(right)} bytes: they differ from offset {first}",
        f"left[{first}:{first + 16}] = {bytes(left[first:first + 16])!r}",
        f"right[{first}:{first + 16}] = {bytes(right[first:first + 16])!r}",
    ]
