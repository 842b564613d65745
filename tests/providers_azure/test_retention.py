"""Retention over Azure Compute Gallery image versions through azure-mgmt-compute against the strict fake
ARM: the sweeper's pass removes exactly the versions the policy names (never `latest`, a template's source
or a version still being made), the dry run lists the same set and removes nothing, one CloudEvent per
removed version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from imagebuilder.pipeline import events as ev
from imagebuilder.provenance.retention import RetentionPolicy
from imagebuilder.providers.azure.retention import apply_retention
from imagebuilder.settings import Settings
from tests.providers_azure.conftest import GALLERY_IMAGE
from tests.providers_azure.fake_arm import FakeArm

NOW = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)


def _versions(arm: FakeArm, specs: list[tuple[str, int, bool, str]]) -> None:
    """Replace the seeded versions: (name, age in days, excludeFromLatest, provisioningState)."""
    for key in [k for k in arm.resources if k.startswith(GALLERY_IMAGE.lower() + "/versions/")]:
        del arm.resources[key]
    for name, days, exclude, state in specs:
        vid = f"{GALLERY_IMAGE}/versions/{name}"
        arm.resources[vid.lower()] = {
            "id": vid,
            "name": name,
            "type": "Microsoft.Compute/galleries/images/versions",
            "location": "westus",
            "tags": {},
            "properties": {
                "publishingProfile": {
                    "excludeFromLatest": exclude,
                    "targetRegions": [{"name": "West US"}],
                    "publishedDate": (NOW - timedelta(days=days)).isoformat().replace("+00:00", "Z"),
                },
                "storageProfile": {"source": {"id": "/subscriptions/x/images/y"}},
                "provisioningState": state,
            },
        }


def _left(arm: FakeArm) -> list[str]:
    arm.finish_all()  # the deletes ARM was asked to start run to their end
    base = GALLERY_IMAGE.lower() + "/versions/"
    return sorted(r["name"] for k, r in arm.resources.items() if k.startswith(base))


def _producer(**tags: str) -> tuple[str, dict[str, Any]]:
    return (
        "producer",
        {
            "tags": tags,
            "properties": {
                "distribute": [{"type": "SharedImage", "runOutputName": "g", "galleryImageId": GALLERY_IMAGE}]
            },
        },
    )


def _consumer(version: str) -> tuple[str, dict[str, Any]]:
    return (
        "consumer",
        {
            "properties": {
                "source": {
                    "type": "SharedImageVersion",
                    "imageVersionId": f"{GALLERY_IMAGE}/versions/{version}",
                }
            }
        },
    )


SPECS = [
    ("1.0.0", 90, False, "Succeeded"),
    ("1.0.1", 80, False, "Succeeded"),  # a template's source: protected
    ("1.0.2", 70, False, "Succeeded"),
    ("1.0.3", 60, False, "Failed"),
    ("1.0.4", 50, False, "Creating"),  # still being made: never touched
    ("1.0.5", 40, False, "Succeeded"),  # `latest` (1.0.6 is excluded from latest)
    ("1.0.6", 1, True, "Succeeded"),
]


def _settings(tmp_path: Path) -> Settings:
    return Settings(provider="azure", storage_connection="", state_dir=tmp_path, task_hub="t")


def test_keep_last_removes_exactly_the_older_versions_never_latest_nor_a_source(provider, arm, tmp_path):
    from triggers.sweeper import retention_pass

    _versions(arm, SPECS)
    templates = [_producer(**{"retention.keepLast": "1"}), _consumer("1.0.1")]
    # the dry run lists what would go and removes nothing
    listed, events = retention_pass(_settings(tmp_path), templates, dry_run=True, moment=NOW, azure=provider)
    assert [v.rsplit("/", 1)[-1] for v in listed] == ["1.0.3", "1.0.2", "1.0.0"]
    assert events == [] and len(_left(arm)) == 7
    removed, events = retention_pass(
        _settings(tmp_path), templates, dry_run=False, moment=NOW, azure=provider
    )
    assert removed == listed
    assert _left(arm) == ["1.0.1", "1.0.4", "1.0.5", "1.0.6"]
    assert [e["type"] for e in events] == [ev.VERSION_REMOVED] * 3
    assert [e["data"]["imageVersionId"] for e in events] == removed
    assert all("producer" in e["data"]["policyFrom"] for e in events)
    deletes = [path for method, path, _, _ in arm.requests if method == "DELETE"]
    assert sorted(p.rsplit("/", 1)[-1] for p in deletes) == ["1.0.0", "1.0.2", "1.0.3"]
    assert arm.problems == []
    # a second pass finds nothing more to remove
    assert retention_pass(_settings(tmp_path), templates, dry_run=False, moment=NOW, azure=provider)[0] == []


def test_max_age_removes_only_versions_older_than_the_limit(provider, arm):
    _versions(arm, SPECS)
    report = apply_retention(
        provider.clients,
        {GALLERY_IMAGE.lower(): (RetentionPolicy(max_age_days=65), "template t")},
        {},
        now=NOW,
    )
    assert report.errors == []
    assert [r.version for r in report.removed] == ["1.0.2", "1.0.1", "1.0.0"]
    assert all("older than 65 days" in r.reason for r in report.removed)
    assert _left(arm) == ["1.0.3", "1.0.4", "1.0.5", "1.0.6"]
    assert arm.problems == []


def test_an_unreadable_definition_is_reported_and_the_others_still_go(provider, arm):
    _versions(arm, SPECS)
    missing = GALLERY_IMAGE.replace("/images/ubuntu", "/images/gone").lower()
    report = apply_retention(
        provider.clients,
        {
            missing: (RetentionPolicy(keep_last=1), "template a"),
            GALLERY_IMAGE.lower(): (RetentionPolicy(keep_last=3), "template b"),
            "not-an-id": (RetentionPolicy(keep_last=1), "template c"),
        },
        {},
        now=NOW,
    )
    assert any("not-an-id" in e for e in report.errors)
    # 1.0.6, 1.0.5 (latest), 1.0.4 (busy) kept by count or rule; 1.0.3 .. 1.0.0 go
    assert [r.version for r in report.removed] == ["1.0.3", "1.0.2", "1.0.1", "1.0.0"]
