"""Integration tests run against the lab's real services; the session fixture brings up what they need.

In CI (``CI=true``) a service that does not come up is a failure, never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hvstore.config import StoreEntry, load_config
from hvstore.lab import LabController

# Store name in the lab's hvstore.toml -> lab service that provides it. The volume contract suite
# (test_volume_contract.py) runs once per entry; a backend joins it by adding its line here.
LAB_STORES: dict[str, str] = {
    "sheepdog": "sheepdog-fake",
    "local": "local",
    "ceph": "ceph",
    "iscsi": "tgt",
    "gluster": "gluster",
    "gluster-dist": "gluster",
}


@pytest.fixture(scope="session")
def lab() -> LabController:
    return LabController()


_started: set[str] = set()


def lab_store(lab: LabController, store: str) -> StoreEntry:
    """Bring up the service behind ``store`` (once per session) and return its config entry."""
    service = LAB_STORES[store]
    if service not in _started:
        lab.up([service])
        _started.add(service)
    return load_config(lab.config_path).store(store)


@pytest.fixture(scope="session", params=sorted(LAB_STORES))
def store(request: pytest.FixtureRequest, lab: LabController) -> StoreEntry:
    return lab_store(lab, request.param)


@pytest.fixture
def backend(store: StoreEntry) -> Iterator:
    with store.backend() as b:
        yield b
