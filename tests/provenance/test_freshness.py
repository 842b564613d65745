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


def test_the_end_event_carries_pending_security_updates() -> None:
    from datetime import UTC, datetime

    from imagebuilder.pipeline.events import RUN_SUCCEEDED, status_events, version_removed_event
    from imagebuilder.pipeline.messages import RunRef

    run = RunRef(subscription_id="s", resource_group="g", template_name="t", run_id="r1")
    when = datetime(2026, 12, 6, tzinfo=UTC)
    events = status_events(
        run, ("Running", "Distributing"), ("Succeeded", None), message="done", error=None, time=when,
        freshness={"securityUpdatesPending": 3, "suite": "bookworm-security"},
    )  # fmt: skip
    end = [e for e in events if e["type"] == RUN_SUCCEEDED]
    assert end and end[0]["data"]["securityUpdatesPending"] == 3
    plain = status_events(
        run, ("Running", "Distributing"), ("Succeeded", None), message="", error=None, time=when
    )
    assert "securityUpdatesPending" not in plain[-1]["data"]
    removed = version_removed_event(
        "/x/versions/1.0.0", reason="old", policy_from="image template t", time=when
    )
    assert removed["subject"] == "/x/versions/1.0.0" and removed["data"]["reason"] == "old"
