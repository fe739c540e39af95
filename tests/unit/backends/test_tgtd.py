"""Tgtd's wording when no tgtd answers: the one message both of its users (the iscsi backend, the sheepdog
backend's exports) give, each with its own owner and next step. Runs the real tgtadm against a control
socket nobody listens on; no tgtd is started."""

from __future__ import annotations

import pytest

from hvstore.backends.tgtd import Tgtd
from hvstore.errors import BackendUnavailable


@pytest.fixture
def no_tgtd(tmp_path) -> str:
    return str(tmp_path / "no-tgtd" / "socket")


def test_default_wording_names_the_socket_and_the_lab_command(no_tgtd):
    with pytest.raises(BackendUnavailable) as caught:
        Tgtd(no_tgtd).targets()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"tgtd does not answer on {no_tgtd} (")
    assert message.endswith("); run 'hvstore lab up tgt'")


def test_owner_and_remedy_frame_the_same_message(no_tgtd):
    tgtd = Tgtd(no_tgtd, owner="sheepdog store 'sd'", remedy="start tgtd to attach")
    with pytest.raises(BackendUnavailable) as caught:
        tgtd.find("iqn.2026-11.org.hvstore:x.y")
    message = str(caught.value)
    assert message.startswith(f"sheepdog store 'sd': tgtd does not answer on {no_tgtd} (")
    assert message.endswith("); start tgtd to attach")
