"""Messages that cross the durable boundary between orchestrators, activities and providers.

Every message is a pydantic model passed as plain JSON (`model_dump(mode="json")` out,
`model_validate(x)` in). History pins what crosses the wire, so these shapes change only additively.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RESOURCE_TYPE = "Microsoft.VirtualMachineImages/imageTemplates"


class Message(BaseModel):
    """Base: frozen, unknown fields ignored so that older histories still validate."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class RunRef(Message):
    """Identity of one run of one template: every transient name derives from it."""

    subscription_id: str
    resource_group: str
    template_name: str
    run_id: str

    @property
    def template_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{RESOURCE_TYPE}/{self.template_name}"
        )

    @property
    def slug(self) -> str:
        """A short name-safe key (template, run) for transient resources and folders."""
        return f"{self.template_name}-{self.run_id}"[:80]


class RunOptions(Message):
    """What a caller asked of one run beyond the template (the optional body of POST .../run).

    `cache`: "use" (default) reuses the provider's step cache; "off" rebuilds every step (the cache is
    still refreshed with the new results). `resume_from_run_id`: a failed run of the same template whose
    succeeded steps this run reuses (refused when the template or an artifact changed before the step
    that failed)."""

    cache: Literal["use", "off"] = "use"
    resume_from_run_id: str | None = None


class BuildInput(Message):
    """Input of the `build_image` orchestration and of every build activity."""

    run: RunRef
    template: dict[str, Any] = Field(description="The whole template resource as stored (ARM JSON)")
    options: RunOptions = Field(default_factory=RunOptions)


class TemplateRef(Message):
    """Identity of one image template: its per-template staging resources derive from it."""

    subscription_id: str
    resource_group: str
    template_name: str

    @property
    def template_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{RESOURCE_TYPE}/{self.template_name}"
        )


class TemplateInput(Message):
    """Input of the template-lifecycle calls (`create_template`, `delete_template`)."""

    ref: TemplateRef
    template: dict[str, Any] = Field(description="The whole template resource as stored (ARM JSON)")
    staging: dict[str, Any] = Field(
        default_factory=dict,
        description="What `create_template` returned in `TemplateStaging.staging` (empty before that)",
    )


class ErrorInfo(Message):
    """A permanent failure, returned (never raised) across the durable boundary."""

    code: str
    message: str
    step: str | None = None
    exit_code: int | None = None
    log_tail: list[str] = Field(default_factory=list)
    log_uri: str | None = None


class Pending(Message):
    """A long-running operation still in progress: poll again after `retry_after_seconds`."""

    operation: dict[str, Any]
    retry_after_seconds: int = 15


class SourceInfo(Message):
    """The resolved source: `latest` becomes an exact version, recorded on the run."""

    type: str
    id: str = Field(description="URN publisher:offer:sku:version or the ARM id of the source image")
    exact_version: str | None = None
    hyper_v_generation: Literal["V1", "V2"] = "V1"
    details: dict[str, Any] = Field(default_factory=dict)


class StagedArtifact(Message):
    """A scriptUri/sourceUri fetched and checksummed into the run's staging area."""

    uri: str
    sha256: str
    size: int
    location: str = Field(description="Where the provider keeps the staged copy")


class PrepareResult(Message):
    status: Literal["succeeded", "failed"]
    source: SourceInfo | None = None
    artifacts: list[StagedArtifact] = Field(default_factory=list)
    error: ErrorInfo | None = None


class BuildEnv(Message):
    """The transient build resources (a build VM on Azure, a sandboxed root locally)."""

    provider: str
    handle: dict[str, Any] = Field(description="Provider-private state, e.g. paths or resource ids")


class StepResult(Message):
    status: Literal["succeeded", "failed", "skipped"]
    step: str
    duration_seconds: float = 0.0
    exit_code: int | None = None
    error: ErrorInfo | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class CaptureResult(Message):
    status: Literal["succeeded", "failed"]
    image: dict[str, Any] = Field(default_factory=dict, description="Provider-private captured image ref")
    error: ErrorInfo | None = None


class ReplicationResult(Message):
    """One distribute target in one region."""

    run_output_name: str
    region: str
    status: Literal["succeeded", "failed"]
    artifact_id: str | None = None
    artifact_uri: str | None = None
    error: ErrorInfo | None = None


class CleanupReport(Message):
    removed: list[str] = Field(default_factory=list)
    kept: list[str] = Field(default_factory=list, description="Kept on purpose (errorHandling abort)")
    errors: list[str] = Field(default_factory=list)


class TemplateStaging(Message):
    """Result of `create_template`: the template's staging resources, or why the template cannot exist.

    `exact_staging_resource_group` is what the API returns as `properties.exactStagingResourceGroup`;
    `staging` is provider-private state handed back to `delete_template` (and found by runs in the stored
    template's `properties.exactStagingResourceGroup`). `warnings` are lines for the create's operation.
    """

    status: Literal["succeeded", "failed"]
    exact_staging_resource_group: str | None = None
    staging: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    error: ErrorInfo | None = None
