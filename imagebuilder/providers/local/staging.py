"""Template lifecycle on this machine: what AIB checks when a template is created, and the template's
staging "resource group" (a folder that belongs to the template, not to a run).

`create_template` resolves the source exactly as a run will (a PlatformImage URN with no local base fails
with AIB's image-not-found, naming the URN and the IMAGEBUILDER_LOCAL_CATALOG setting; a ManagedImage or
SharedImageVersion source must exist in the local stores), and creates
`state_dir/staging/<sub>/<group>/` with `staging.json` naming the owning template. The group is
`IT_<rg>_<template>_<guid>` unless `properties.stagingResourceGroup` names one; a user-given group used by
another template, or not empty, is `BadStagingResourceGroup`. `delete_template` removes a generated group
and empties (keeps) a user-given one, as AIB documents; build roots the template's failed runs kept
(errorHandling abort) are removed with it, as AIB's kept build VMs go with the staging resource group.
Group ids compare case-insensitively, as ARM's.

Not checked here (nothing local to check against): the identity (no managed identities on one machine) and
distribute galleries (local gallery image definitions are created on first use). Customizers this Linux
build cannot run (PowerShell, Windows*) are refused by the run's prepare, not here: AIB accepts them at
create, and the same template must create alike on both providers.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from imagebuilder.pipeline.messages import (
    BuildInput,
    CleanupReport,
    ErrorInfo,
    RunRef,
    TemplateInput,
    TemplateStaging,
)
from imagebuilder.providers.base import LogSink, ProviderError
from imagebuilder.providers.local import catalog, debug, prepare
from imagebuilder.providers.local.context import RunContext, Settings, TemplateUnreadable
from imagebuilder.providers.local.fsutil import locked_file
from imagebuilder.providers.local.gallery import GalleryError
from imagebuilder.providers.local.layout import safe_name
from imagebuilder.template.models import PlatformImageSource

RECORD = "staging.json"
# The run id of the synthetic run a create resolves the source with (no folder is made for it).
_CREATE_RUN = "template-create"
_SOURCE_CODES = {
    "PlatformImage": "BadPIRSource",
    "ManagedImage": "BadManagedImageSource",
    "SharedImageVersion": "BadSharedImageVersionSource",
}


def staging_root(settings: Settings) -> Path:
    return settings.state_dir / "staging"


def group_dir(settings: Settings, group_id: str) -> Path:
    """The folder of a staging group id (/subscriptions/<s>/resourceGroups/<g>), case-insensitive as ARM."""
    parts = group_id.strip("/").split("/")
    sub, group = (parts[1], parts[3]) if len(parts) >= 4 else ("_", group_id)
    return staging_root(settings) / safe_name(sub.lower(), limit=90) / safe_name(group.lower(), limit=90)


def _owner(template: TemplateInput) -> str:
    return template.ref.template_id.lower()


def _failed(code: str, message: str, log: LogSink) -> TemplateStaging:
    log.write(f"! create failed: {code}: {message}\n")
    return TemplateStaging(status="failed", error=ErrorInfo(code=code, message=message, step="create"))


def create_template(settings: Settings, template: TemplateInput, log: LogSink) -> TemplateStaging:
    """See `ComputeProvider.create_template`."""
    build = BuildInput(
        run=RunRef(
            subscription_id=template.ref.subscription_id,
            resource_group=template.ref.resource_group,
            template_name=template.ref.template_name,
            run_id=_CREATE_RUN,
        ),
        template=template.template,
    )
    ctx = RunContext(settings, build)
    try:
        props = ctx.template.properties
    except TemplateUnreadable as exc:
        return _failed(exc.code, str(exc), log)
    try:
        source = prepare.resolve_source(ctx)
    except catalog.CatalogError as exc:
        src = props.source
        urn = src.urn if isinstance(src, PlatformImageSource) else src.type  # only PlatformImage resolves
        return _failed(
            "BadPIRSource",
            f"Image not found: the platform image {urn} cannot be resolved on this machine. {exc}",
            log,
        )
    except GalleryError as exc:
        code = (
            exc.code if exc.code.startswith("Bad") else _SOURCE_CODES.get(props.source.type, "BadSourceType")
        )
        return _failed(code, f"Image not found: {exc}", log)
    log.write(f"source {source.type} {source.id} resolves to {source.exact_version or source.id}\n")
    return _ensure_group(settings, template, props.staging_resource_group or "", log)


def _ensure_group(settings: Settings, template: TemplateInput, given: str, log: LogSink) -> TemplateStaging:
    owner = _owner(template)
    ref = template.ref
    root = staging_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    with locked_file(root / ".lock"):
        if given:
            group_id, user_given = given, True
        else:
            existing = _find_generated(settings, owner)
            # Resource group names stop at 90 characters: the guid is kept whole, the rest shortened.
            name = f"IT_{ref.resource_group}_{ref.template_name}"[:53] + f"_{uuid.uuid4()}"
            group_id = existing or f"/subscriptions/{ref.subscription_id}/resourceGroups/{name}"
            user_given = False
        folder = group_dir(settings, group_id)
        record = folder / RECORD
        if record.is_file():
            data = _read(record)
            if str(data.get("owner", "")).lower() != owner:
                return _failed(
                    "BadStagingResourceGroup",
                    f"The staging resource group {group_id} is already used by image template "
                    f"{data.get('owner')}: give each template its own stagingResourceGroup, or leave it out.",
                    log,
                )
        else:
            folder.mkdir(parents=True, exist_ok=True)
            if user_given and any(p.name != RECORD for p in folder.iterdir()):
                return _failed(
                    "BadStagingResourceGroup",
                    f"The staging resource group {group_id} is not empty: give an empty resource group "
                    "(Image Builder empties it when the template is deleted), or leave "
                    "stagingResourceGroup out.",
                    log,
                )
            _write(record, {"owner": owner, "id": group_id, "userGiven": user_given})
    log.write(f"staging resource group {group_id} ({'given' if user_given else 'created'})\n")
    return TemplateStaging(
        status="succeeded",
        exact_staging_resource_group=group_id,
        staging={"group": group_id, "userGiven": user_given, "folder": str(folder)},
    )


def _find_generated(settings: Settings, owner: str) -> str | None:
    """The group a previous (retried) create made for this template."""
    root = staging_root(settings)
    for record in root.glob(f"*/*/{RECORD}"):
        data = _read(record)
        if str(data.get("owner", "")).lower() == owner and not data.get("userGiven"):
            return str(data.get("id"))
    return None


def delete_template(settings: Settings, template: TemplateInput, log: LogSink) -> CleanupReport:
    """See `ComputeProvider.delete_template`."""
    owner = _owner(template)
    removed: list[str] = []
    errors: list[str] = []
    # build roots its failed runs kept (errorHandling abort) go with it, as AIB's build VMs go with the
    # staging resource group
    for kept in debug.kept_of(settings.state_dir / "local" / "runs", owner):
        try:
            removed += debug.cleanup(kept)
            log.write(f"kept build root of {kept.name} removed with its template\n")
        except ProviderError as exc:
            errors.append(f"{kept}: {exc}")
    root = staging_root(settings)
    if not root.is_dir():
        return CleanupReport()
    with locked_file(root / ".lock"):
        for record in list(root.glob(f"*/*/{RECORD}")):
            data = _read(record)
            if str(data.get("owner", "")).lower() != owner:
                continue
            folder = record.parent
            group = str(data.get("id") or folder.name)
            try:
                if data.get("userGiven"):
                    for child in folder.iterdir():  # emptied, not deleted: the group is the user's
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child)
                        else:
                            child.unlink()
                    log.write(f"staging resource group {group} emptied (it was given by the template)\n")
                else:
                    shutil.rmtree(folder)
                    log.write(f"staging resource group {group} deleted\n")
                removed.append(group)
            except OSError as exc:
                errors.append(f"{group}: {exc}")
    return CleanupReport(removed=removed, errors=errors)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
