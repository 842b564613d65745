"""Freshness: Debian version ordering (the cases of dpkg's own test suite) and pending security updates."""

from __future__ import annotations

import pytest

from imagebuilder.provenance.freshness import (
    compare_versions,
    freshness_record,
    parse_packages,
    pending_updates,
)
from imagebuilder.provenance.sbom import InstalledPackage, Inventory


@pytest.mark.parametrize(
    ("a", "b", "sign"),
    [
        ("1.0", "1.0", 0),
        ("1.0", "1.1", -1),
        ("1.0~rc1", "1.0", -1),
        ("1.0", "1.0+deb12u1", -1),
        ("1:0.1", "2.0", 1),
        ("1.22.1-9", "1.22.1-9+deb12u1", -1),
        ("2.36-9+deb12u9", "2.36-9+deb12u10", -1),
        ("1.0-1", "1.0-1~bpo1", 1),
        ("1.0a", "1.0+", -1),
        ("0001", "1", 0),
        ("1.2.3", "1.2.3-0", 0),
    ],
)
def test_compare_versions(a: str, b: str, sign: int) -> None:
    result = compare_versions(a, b)
    assert (result > 0) - (result < 0) == sign
    back = compare_versions(b, a)
    assert (back > 0) - (back < 0) == -sign


INDEX = """Package: nginx
Version: 1.22.1-9+deb12u2
Architecture: amd64

Package: nginx
Version: 1.22.1-9+deb12u1
Architecture: amd64

Package: tzdata
Version: 2025b-0+deb12u1
Architecture: all
Description: time zone data
 continued line: with a colon

Package: libc6
Version: 2.36-9+deb12u9
Architecture: amd64
"""


def test_pending_updates() -> None:
    inv = Inventory(
        kind="dpkg",
        packages=[
            InstalledPackage(name="nginx", version="1.22.1-9+deb12u1", arch="amd64"),
            InstalledPackage(name="libc6", version="2.36-9+deb12u9", arch="amd64"),
            InstalledPackage(name="tzdata", version="2024a-0+deb12u1", arch="all"),
            InstalledPackage(name="bash", version="5.2.15-2+b7", arch="amd64"),
        ],
    )
    index = parse_packages(INDEX)
    assert index[("nginx", "amd64")] == "1.22.1-9+deb12u2"
    updates = pending_updates(inv, index)
    assert [(u.name, u.available) for u in updates] == [
        ("nginx", "1.22.1-9+deb12u2"),
        ("tzdata", "2025b-0+deb12u1"),
    ]
    record = freshness_record(updates, suite="bookworm-security", mirror="http://m", checked_at="t")
    assert record["securityUpdatesPending"] == 2
