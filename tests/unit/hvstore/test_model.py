from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvstore.backends.registry import BACKENDS
from hvstore.errors import InvalidArgument
from hvstore.model import NAME_MAX, Capabilities, Feature, VolumeRef, validate_name, yes
from hvstore.units import format_size, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("512M", 512 << 20), ("10G", 10 << 30), ("1T", 1 << 40), ("4096", 4096), ("1.5G", 3 << 29),
    ("2k", 2048), ("1GiB", 1 << 30), (" 7 M ", 7 << 20), ("0", 0),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1G", "1Q", "1.0000001K", "ten", "1 G B"])
def test_parse_size_rejects(text):
    with pytest.raises(InvalidArgument):
        parse_size(text)


@given(st.integers(min_value=0, max_value=1 << 50))
def test_format_size_never_fails(n):
    assert format_size(n).split()[1] in ("B", "KiB", "MiB", "GiB", "TiB")


@pytest.mark.parametrize("name", ["vm1-disk0", "a", "A.b_c+d-e", "x" * NAME_MAX])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "a\\b", ".hidden", "-x", "x" * (NAME_MAX + 1), "a b", "a@b",
                                  "a:b", "ü"])
def test_invalid_names(name):
    with pytest.raises(InvalidArgument):
        validate_name(name)


def test_volume_ref_parse():
    assert VolumeRef.parse("ceph/vm1") == VolumeRef("ceph", "vm1")
    assert VolumeRef.parse("ceph/vm1@s1", allow_snapshot=True) == VolumeRef("ceph", "vm1", "s1")
    assert str(VolumeRef("ceph", "vm1", "s1")) == "ceph/vm1@s1"
    for bad in ["vm1", "/vm1", "ceph/", "ceph/a/b", "ceph/vm1@", "ceph/vm1@s1"]:
        with pytest.raises(InvalidArgument):
            VolumeRef.parse(bad)


def test_capability_table_must_be_complete():
    with pytest.raises(TypeError):
        Capabilities("x", {Feature.CREATE: yes()}, max_nodes=1, snapshot_kind="none")


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_every_backend_declares_every_feature_and_says_why_not(kind):
    caps = BACKENDS[kind].CAPABILITIES
    assert set(caps.features) == set(Feature)
    assert all(s.supported or s.note for s in caps.features.values())
    assert caps.to_json()["features"].keys() == {f.value for f in Feature}
