"""Retention policies (pure): keep the last N, delete older than D days, never `latest` nor a template's
source version; policies from template tags; bad values name the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from imagebuilder.provenance.retention import (
    PolicyError,
    RetentionPolicy,
    VersionInfo,
    latest_of,
    plan_removals,
    policies_from_templates,
    policy_from_tags,
)

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def _v(name: str, days_old: float, **kw: bool) -> VersionInfo:
    return VersionInfo(name=name, published=NOW - timedelta(days=days_old), **kw)


VERSIONS = [
    _v("1.0.0", 90),
    _v("1.0.1", 60),
    _v("1.0.2", 40),
    _v("1.0.10", 20),
    _v("1.0.11", 1, exclude_from_latest=True),
]


def test_latest_skips_excluded_and_orders_numerically() -> None:
    assert latest_of(VERSIONS) == "1.0.10"


def test_keep_last() -> None:
    removed = plan_removals(VERSIONS, RetentionPolicy(keep_last=2), now=NOW)
    assert [r.version for r in removed] == ["1.0.2", "1.0.1", "1.0.0"]


def test_keep_last_one_never_removes_latest() -> None:
    removed = plan_removals(VERSIONS, RetentionPolicy(keep_last=1), now=NOW)
    assert "1.0.10" not in [r.version for r in removed]
    assert [r.version for r in removed] == ["1.0.2", "1.0.1", "1.0.0"]


def test_max_age_and_protected() -> None:
    removed = plan_removals(VERSIONS, RetentionPolicy(max_age_days=30), now=NOW, protected={"1.0.1"})
    assert [r.version for r in removed] == ["1.0.2", "1.0.0"]
    assert "older than 30 days" in removed[0].reason


def test_both_keep_at_least_n() -> None:
    removed = plan_removals(VERSIONS, RetentionPolicy(keep_last=4, max_age_days=30), now=NOW)
    assert [r.version for r in removed] == ["1.0.0"]


def test_empty_policy_removes_nothing() -> None:
    assert plan_removals(VERSIONS, RetentionPolicy(), now=NOW) == []


def test_policy_from_tags() -> None:
    assert policy_from_tags({"Retention.KeepLast": "3", "retention.maxAgeDays": "7.5"}) == RetentionPolicy(
        3, 7.5
    )
    with pytest.raises(PolicyError, match=r"tags\.retention\.keepLast is '0'"):
        policy_from_tags({"retention.keepLast": "0"})
    with pytest.raises(PolicyError, match=r"tags\.retention\.maxAgeDays is 'soon', not a number"):
        policy_from_tags({"retention.maxAgeDays": "soon"})


GAL = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/app"


def test_policies_from_templates() -> None:
    found = policies_from_templates(
        [
            (
                "builder",
                {
                    "tags": {"retention.keepLast": "2"},
                    "properties": {"distribute": [{"type": "SharedImage", "galleryImageId": GAL}]},
                },
            ),
            (
                "consumer",
                {
                    "properties": {
                        "source": {"type": "SharedImageVersion", "imageVersionId": GAL + "/versions/1.0.1"}
                    }
                },
            ),
            (
                "floating",
                {
                    "properties": {
                        "source": {"type": "SharedImageVersion", "imageVersionId": GAL + "/versions/latest"}
                    }
                },
            ),
            ("broken", {"tags": {"retention.keepLast": "-1"}, "properties": {}}),
        ]
    )
    assert found.policies == {GAL.lower(): (RetentionPolicy(keep_last=2), "image template builder")}
    assert found.protected == {GAL.lower(): {"1.0.1"}}
    assert len(found.errors) == 1 and "'broken'" in found.errors[0]
