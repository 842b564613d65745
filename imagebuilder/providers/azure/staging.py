"""The per-template staging resource group of the Azure provider (AIB's `IT_<rg>_<template>_<guid>`).

Owns its name, its creation at template create, its reuse by every run (runs find it in the stored
template's `properties.exactStagingResourceGroup`) and its removal at template delete: a group this
provider created is deleted; a user's `properties.stagingResourceGroup` is emptied of what the template's
runs left and untagged, never deleted. Pure decisions here; the provider passes the ARM clients in.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imagebuilder.pipeline.messages import BuildInput, TemplateRef
from imagebuilder.providers.azure.clients import ArmFailure, AzureClients, as_json

TAG_TEMPLATE = "imagebuilder-template"
TAG_RUN = "imagebuilder-run"
TAG_STAGING = "imagebuilder-staging"  # on a group: "created" (ours, deleted with the template) or "given"
_GROUP_ID = re.compile(r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/?$", re.IGNORECASE)


@dataclass(frozen=True)
class StagingGroup:
    """Where a template's build resources live."""

    subscription: str
    name: str
    given: bool  # the user's properties.stagingResourceGroup (emptied at delete, never deleted)

    @property
    def id(self) -> str:
        return f"/subscriptions/{self.subscription}/resourceGroups/{self.name}"


def default_name(ref: TemplateRef) -> str:
    """AIB's `IT_<resourceGroup>_<templateName>_<guid>`; the guid derives from the template id, so a
    retried create finds the group the first attempt made."""
    guid = uuid.uuid5(uuid.NAMESPACE_URL, ref.template_id.lower())
    return re.sub(r"[^\w\-.()]", "_", f"IT_{ref.resource_group}_{ref.template_name}_{guid}")[:90]


def parse_group_id(value: str, field: str, subscription: str, code: str) -> str:
    """The name of a resource group id, checked to be in the template's subscription."""
    match = _GROUP_ID.match(value or "")
    if not match:
        raise ArmFailure(
            code, f"{field} {value!r} is not a resource group id (/subscriptions/<id>/resourceGroups/<name>)"
        )
    if match.group(1).lower() != subscription.lower():
        raise ArmFailure(code, f"{field} must be in the template's subscription {subscription}")
    return match.group(2)


def of_template(ref: TemplateRef, template: dict[str, Any]) -> StagingGroup:
    """The staging group a template asks for (given or AIB's default name)."""
    props = template.get("properties") or {}
    given = str(props.get("stagingResourceGroup") or "")
    if given:
        name = parse_group_id(
            given, "properties.stagingResourceGroup", ref.subscription_id, "BadStagingResourceGroup"
        )
        return StagingGroup(ref.subscription_id, name, True)
    return StagingGroup(ref.subscription_id, default_name(ref), False)


def of_build(build: BuildInput) -> StagingGroup | None:
    """The template's staging group when the template was created with one (else runs use their own).
    Read from the JSON as stored: `exactStagingResourceGroup` is server state the template model drops,
    and cleanup needs the group even for a template that cannot be read."""
    props = build.template.get("properties") or {}
    exact = str(props.get("exactStagingResourceGroup") or "")
    if not exact:
        return None
    run = build.run
    name = parse_group_id(
        exact, "properties.exactStagingResourceGroup", run.subscription_id, "BadStagingResourceGroup"
    )
    return StagingGroup(run.subscription_id, name, bool(props.get("stagingResourceGroup")))


def ensure(
    arm: AzureClients,
    ref: TemplateRef,
    group: StagingGroup,
    location: str,
    tags: dict[str, str],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Create the group, or adopt an existing one AIB's way: ours already, or a given group that is empty
    and in the template's region (it gets this template's tags)."""
    groups = arm.resources.resource_groups
    existing = arm.get(f"read staging resource group {group.name}", lambda: groups.get(group.name))
    mine = {**tags, TAG_TEMPLATE: ref.template_id, TAG_STAGING: "given" if group.given else "created"}
    if existing is None:
        log(f"creating staging resource group {group.name}\n")
        if group.given:  # AIB creates a named group that does not exist, and deletes it with the template
            mine[TAG_STAGING] = "created"
        body = {"location": location, "tags": mine}
        return as_json(
            arm.call("create staging resource group", lambda: groups.create_or_update(group.name, body))
        )
    owner = (existing.get("tags") or {}).get(TAG_TEMPLATE)
    if owner is not None and owner.lower() == ref.template_id.lower():
        return existing  # ours (a retried create, or a run re-checking)
    if owner is not None or not group.given:
        raise ArmFailure(
            "BadStagingResourceGroup",
            f"resource group {group.name} belongs to another image template ({owner or 'not ours'}); "
            "give an empty resource group of your own in properties.stagingResourceGroup, or omit it",
        )
    if _norm(existing.get("location")) != _norm(location):
        raise ArmFailure(
            "BadStagingResourceGroup",
            f"properties.stagingResourceGroup {group.name} is in {existing.get('location')}, the template "
            f"in {location}; use an empty group in the template's region",
        )
    contents = arm.call(
        "list staging resource group",
        lambda: [dict(r) for r in arm.resources.resources.list_by_resource_group(group.name)],
    )
    if contents:
        raise ArmFailure(
            "BadStagingResourceGroup",
            f"properties.stagingResourceGroup {group.name} is not empty ({len(contents)} resources, e.g. "
            f"{contents[0].get('id')}); give an empty resource group or omit it",
        )
    log(f"using the empty resource group {group.name} for staging\n")
    marks = {TAG_TEMPLATE: ref.template_id, TAG_STAGING: "given"}  # the user's own tags stay as they are
    body = {
        "location": existing.get("location") or location,
        "tags": {**(existing.get("tags") or {}), **marks},
    }
    return as_json(arm.call("tag staging resource group", lambda: groups.create_or_update(group.name, body)))


def untag(arm: AzureClients, group: StagingGroup, existing: dict[str, Any]) -> None:
    """Give a user's group back as it was: this provider's tags removed."""
    tags = {
        k: v for k, v in (existing.get("tags") or {}).items() if k not in (TAG_TEMPLATE, TAG_STAGING, TAG_RUN)
    }
    body = {"location": existing.get("location"), "tags": tags}
    groups = arm.resources.resource_groups
    arm.call("untag staging resource group", lambda: groups.create_or_update(group.name, body))


def runs_left(arm: AzureClients, group: StagingGroup, ref: TemplateRef) -> list[str]:
    """Run ids whose resources are still in the group (kept by errorHandling abort, or a lost cleanup)."""
    contents = arm.call(
        "list staging resource group",
        lambda: [dict(r) for r in arm.resources.resources.list_by_resource_group(group.name)],
    )
    runs = {
        str((r.get("tags") or {}).get(TAG_RUN))
        for r in contents
        if str((r.get("tags") or {}).get(TAG_TEMPLATE, "")).lower() == ref.template_id.lower()
        and (r.get("tags") or {}).get(TAG_RUN)
    }
    return sorted(runs)


def _norm(name: Any) -> str:
    return re.sub(r"\s+", "", str(name or "").lower())
