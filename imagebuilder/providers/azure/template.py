"""The template lifecycle of the Azure provider: at create, the checks AIB makes (the source resolves, the
gallery targets exist) and the template's staging group (staging.py); at delete, what the template's runs
left, then the group (deleted if this provider made it, emptied and untagged if it is the user's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from imagebuilder.pipeline.messages import (
    BuildInput,
    CleanupReport,
    ErrorInfo,
    RunRef,
    TemplateInput,
    TemplateStaging,
)
from imagebuilder.providers.azure import buildenv, source
from imagebuilder.providers.azure import staging as staging_group
from imagebuilder.providers.azure.cleanup import cleanup
from imagebuilder.providers.azure.clients import ArmFailure, AzureClients, Throttled
from imagebuilder.providers.azure.context import Ctx, Settings
from imagebuilder.providers.azure.names import ArmId, Names
from imagebuilder.providers.base import LogSink, TemplateUnreadable, TransientProviderError
from imagebuilder.template.models import SharedImageDistributor


def create_template(settings: Settings, template: TemplateInput, log: LogSink) -> TemplateStaging:
    """Check the source and the gallery targets as AIB does at create, then make (or adopt) the
    template's staging resource group (staging.py)."""
    ref = template.ref
    build = BuildInput(
        run=RunRef(
            subscription_id=ref.subscription_id,
            resource_group=ref.resource_group,
            template_name=ref.template_name,
            run_id="template-create",
        ),
        template=template.template,
    )
    arm = settings.clients(ref.subscription_id, build)
    codes = {
        "PlatformImage": "BadPIRSource",
        "ManagedImage": "BadManagedImageSource",
        "SharedImageVersion": "BadSharedImageVersionSource",
    }
    step = "create_template"
    try:
        group = staging_group.of_template(ref, template.template)
        ctx = Ctx(build, log, {}, {}, arm, Names.of(build), settings)
        props = ctx.template.properties
        try:
            source.resolve_source(ctx)
        except ArmFailure as exc:
            if exc.status not in (None, 404) and exc.code not in ("SourceImageNotFound",):
                raise
            raise ArmFailure(codes.get(props.source.type, "BadSourceType"), exc.arm_message) from exc
        for index, target in enumerate(props.distribute):
            if not isinstance(target, SharedImageDistributor):
                continue
            where = f"properties.distribute[{index}]"
            parsed = ArmId.parse(target.gallery_image_id, f"{where}.galleryImageId")
            if buildenv.gallery_image(ctx, parsed, where) is None:
                raise ArmFailure(
                    "BadSharedImageDistribute",
                    f"{where}.galleryImageId {target.gallery_image_id} does not exist; create the "
                    "gallery image definition first",
                )
        tags = dict(props.managed_resource_tags or {})
        made = staging_group.ensure(arm, ref, group, ctx.template.location, tags, log.write)
    except TemplateUnreadable as exc:
        error = exc.error_info(step, log)
        log.write(f"{step} failed: {error.code}: {error.message}\n")
        return TemplateStaging(status="failed", error=error)
    except ArmFailure as exc:
        log.write(f"{step} failed: {exc.code}: {exc.arm_message}\n")
        return TemplateStaging(
            status="failed",
            error=ErrorInfo(code=exc.code, message=exc.arm_message, step=step, log_uri=log.uri or None),
        )
    created = (made.get("tags") or {}).get(staging_group.TAG_STAGING) == "created"
    return TemplateStaging(
        status="succeeded",
        exact_staging_resource_group=group.id,
        staging={"resource_group": group.name, "created": created},
    )


def delete_template(settings: Settings, template: TemplateInput, log: LogSink) -> CleanupReport:
    """Delete the staging group this provider created; empty and untag a user's group. What runs left
    there (kept on abort) goes first, found by the runs' tags. Waits within the cleanup budget."""
    ref = template.ref
    props = template.template.get("properties") or {}
    name = str(template.staging.get("resource_group") or "")
    try:
        if not name:
            exact = str(props.get("exactStagingResourceGroup") or "")
            if not exact:
                return CleanupReport()  # the create never made one
            name = staging_group.parse_group_id(
                exact,
                "properties.exactStagingResourceGroup",
                ref.subscription_id,
                "BadStagingResourceGroup",
            )
        group = staging_group.StagingGroup(ref.subscription_id, name, bool(props.get("stagingResourceGroup")))
        arm = settings.clients(ref.subscription_id, None)
        groups = arm.resources.resource_groups
        existing = arm.get(f"read staging resource group {name}", lambda: groups.get(name))
        if existing is None:
            return CleanupReport()
        tags = existing.get("tags") or {}
        if str(tags.get(staging_group.TAG_TEMPLATE, "")).lower() != ref.template_id.lower():
            log.write(f"delete: {name} is not tagged for this template; left alone\n")
            return CleanupReport(kept=[group.id])
        report = CleanupReport()
        for run_id in staging_group.runs_left(arm, group, ref):
            run = RunRef(
                subscription_id=ref.subscription_id,
                resource_group=ref.resource_group,
                template_name=ref.template_name,
                run_id=run_id,
            )
            left = cleanup(settings, BuildInput(run=run, template=template.template), keep=False, log=log)
            report.removed.extend(left.removed)
            report.errors.extend(left.errors)
        if report.errors:
            return report
        if tags.get(staging_group.TAG_STAGING) == "created":
            delete_and_wait(
                settings,
                arm,
                f"staging resource group {name}",
                lambda p: groups.begin_delete(name, polling=p),
                settings.clock() + settings.cleanup_budget,
            )
            log.write(f"deleted staging resource group {name}\n")
            report.removed.append(group.id)
        else:
            staging_group.untag(arm, group, existing)
            log.write(f"emptied the staging resource group {name} (yours: kept)\n")
            report.kept.append(group.id)
        return report
    except ArmFailure as exc:
        log.write(f"delete_template failed: {exc.code}: {exc.arm_message}\n")
        return CleanupReport(errors=[f"{exc.code}: {exc.arm_message}"])


def delete_and_wait(
    settings: Settings, arm: AzureClients, what: str, begin: Callable[[Any], Any], deadline: float
) -> None:
    started = arm.start(f"delete {what}", begin)
    op = started.operation(f"delete {what}")
    while op is not None:
        try:
            status = arm.operation_status(op)
        except Throttled as exc:
            pause = exc.retry_after
        else:
            if status.done:
                if status.state != "Succeeded":
                    raise ArmFailure(status.error_code or "DeleteFailed", status.error_message or what)
                return
            pause = status.retry_after
        if settings.clock() + pause > deadline:
            raise TransientProviderError(f"{what} is still being deleted", hint="the activity is retried")
        settings.sleep(pause)
