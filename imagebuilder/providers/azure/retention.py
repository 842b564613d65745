"""Retention of gallery image versions in Azure Compute Gallery: applies `provenance.retention` policies to
the image definitions the templates name, through azure-mgmt-compute (`gallery_image_versions.
list_by_gallery_image`, `begin_delete`), or, with `dry_run`, only lists what it would remove.

What a version looks like to the policy: its name, `publishingProfile.publishedDate` (ARM sets it when
the version is made), `publishingProfile.excludeFromLatest`, and `provisioningState`. Never removed: the
version `latest` resolves to, a version a template names as its source, a version still being created,
updated or deleted (provisioningState other than Succeeded/Failed). A delete is started, not awaited (ARM
finishes it; the next sweep sees the version gone or still Deleting, which it leaves alone). Errors are
reported per definition, never raised: the sweeper goes on with the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from imagebuilder.provenance.retention import (
    RemovedVersion,
    RetentionPolicy,
    RetentionReport,
    VersionInfo,
    plan_removals,
)
from imagebuilder.providers.azure.clients import AzureClients, as_json
from imagebuilder.providers.azure.names import ArmId
from imagebuilder.providers.base import ProviderError

SETTLED = ("Succeeded", "Failed")


def _published(profile: Mapping[str, Any]) -> datetime | None:
    value = profile.get("publishedDate")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def version_info(resource: Mapping[str, Any]) -> VersionInfo:
    """A gallery image version (ARM JSON) as retention sees it."""
    props = resource.get("properties") or {}
    profile = props.get("publishingProfile") or {}
    return VersionInfo(
        name=str(resource.get("name")),
        published=_published(profile),
        exclude_from_latest=bool(profile.get("excludeFromLatest")),
        ready=props.get("provisioningState") == "Succeeded",
    )


def apply_retention(
    clients: Callable[[str], AzureClients],
    policies: Mapping[str, tuple[RetentionPolicy, str]],
    protected: Mapping[str, set[str]],
    *,
    now: datetime,
    dry_run: bool = False,
) -> RetentionReport:
    """Apply each policy (image definition id, lower case -> (policy, where it was set)) to that
    definition's versions; `clients(subscription)` gives the SDK clients of a subscription."""
    report = RetentionReport(dry_run=dry_run)
    for definition_id, (policy, origin) in sorted(policies.items()):
        if not policy.empty:
            _apply_one(clients, definition_id, policy, origin, protected, now, report)
    return report


def _apply_one(
    clients: Callable[[str], AzureClients],
    definition_id: str,
    policy: RetentionPolicy,
    origin: str,
    protected: Mapping[str, set[str]],
    now: datetime,
    report: RetentionReport,
) -> None:
    try:
        parsed = ArmId.parse(definition_id, "galleryImageId")
        rg, gallery, image = parsed.resource_group, parsed.name("galleries"), parsed.name("images")
        arm = clients(parsed.subscription)
        versions = arm.compute.gallery_image_versions
        resources = arm.call(
            f"list versions of {definition_id}",
            lambda: [as_json(v) for v in versions.list_by_gallery_image(rg, gallery, image)],
        )
    except (ProviderError, ValueError) as exc:
        report.errors.append(f"{definition_id}: {exc}")
        return
    by_name = {str(r.get("name")): r for r in resources}
    busy = {
        name
        for name, r in by_name.items()
        if (r.get("properties") or {}).get("provisioningState") not in SETTLED
    }
    keep = busy | protected.get(definition_id.lower(), set())
    infos = [version_info(r) for r in resources]
    for removal in plan_removals(infos, policy, now=now, protected=keep):
        version_id = str(by_name[removal.version].get("id") or f"{definition_id}/versions/{removal.version}")
        if not report.dry_run:
            try:
                arm.start(
                    f"delete image version {version_id}",
                    _deleter(versions, rg, gallery, image, removal.version),
                )
            except ProviderError as exc:
                report.errors.append(f"{version_id}: {exc}")
                continue
        report.removed.append(
            RemovedVersion(
                version_id, version_id.rsplit("/versions/", 1)[0], removal.version, removal.reason, origin
            )
        )


def _deleter(versions: Any, rg: str, gallery: str, image: str, version: str) -> Callable[[Any], Any]:
    def begin(polling: Any) -> Any:
        return versions.begin_delete(rg, gallery, image, version, polling=polling)

    return begin
