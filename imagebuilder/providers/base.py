"""The ComputeProvider seam: the one interface between the build pipeline and where images are built.

Two implementations: `providers.local` (a namespace sandbox, disk tooling and QEMU on one machine) and
`providers.azure` (a build VM in the user's subscription). Activities call exactly one method each;
orchestrators never see a provider, only the JSON messages of `imagebuilder.pipeline.messages`.

Contract for every method:

* **Idempotent.** Resource names derive from `BuildInput.run` (template, run id) and the step, never from
  a clock or a random source, so a retried activity or a replay after a crash finds what the first
  attempt made and does not make a second one.
* **Permanent failures are returned**, as a result whose `status` is `"failed"` and whose `error`
  (`ErrorInfo`) names the step, the exit code, the last lines of output and the log's URI.
* **Transient failures are raised** as `TransientProviderError`; the orchestrator retries the activity
  with `call_activity_with_retry`.
* **Long-running work may return `Pending`** (the Azure provider does: it starts an ARM operation and
  returns). The orchestrator waits `retry_after_seconds` on a durable timer and then calls
  `poll(pending)`, which returns the method's final result or another `Pending`. The local provider
  usually finishes in the call and returns the result itself.
* **Logs** go to the `LogSink` given to the call, line by line as they are produced (the run's
  `customization.log`). Secrets never reach a sink.

Exceptions::

    ProviderError                 base of everything a provider raises on purpose
    ├── TransientProviderError    retry me (throttling, a lost connection, a busy resource)
    ├── ProviderConfigError       the provider cannot work here at all (a tool missing, no credentials)
    └── TemplateUnreadable        the template as stored cannot be read as the model (permanent; names
                                  the field; providers return it as a failed result of the phase)

**The template** reaches a provider as the JSON it was stored as (`BuildInput.template`,
`TemplateInput.template`); providers read it as the frozen model, parsed once per call with
`read_template` (`template.parse_stored_template`: a template valid at its PUT always loads).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Protocol

from imagebuilder.pipeline.messages import (
    BuildEnv,
    BuildInput,
    CaptureResult,
    CleanupReport,
    ErrorInfo,
    Pending,
    PrepareResult,
    ReplicationResult,
    StepResult,
    TemplateInput,
    TemplateStaging,
)
from imagebuilder.template import ImageTemplate, TemplateError, parse_stored_template


class ProviderError(Exception):
    """Base of the errors a provider raises on purpose. `hint` says what the user can do."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message if hint is None else f"{message} ({hint})")
        self.hint = hint


class TransientProviderError(ProviderError):
    """A failure worth retrying: the activity re-raises it so the orchestrator's retry policy applies."""


class ProviderConfigError(ProviderError):
    """The provider cannot run in this environment (missing tool, credentials, settings)."""


class TemplateUnreadable(ProviderError):
    """The template as stored cannot be read as the template model: `code` (AIB's, from the parse) and
    `field` (its JSON path). Permanent: the same JSON never reads differently."""

    def __init__(self, error: TemplateError) -> None:
        where = f" ({error.target})" if error.target else ""
        super().__init__(
            f"the template as stored cannot be read{where}: {error.message}",
            hint="delete the template and create it again with a valid body",
        )
        self.code = error.code
        self.field = error.target

    def error_info(self, step: str, log: LogSink | None = None) -> ErrorInfo:
        """This failure as the `ErrorInfo` of a failed result of `step`."""
        uri = log.uri if log is not None else ""
        return ErrorInfo(code=self.code, message=str(self), step=step, log_uri=uri or None)


def read_template(resource: Mapping[str, Any]) -> ImageTemplate:
    """A template as stored (`BuildInput.template`, `TemplateInput.template`) as the frozen model; raises
    `TemplateUnreadable` naming the field when it cannot be read."""
    try:
        return parse_stored_template(resource)
    except TemplateError as exc:
        raise TemplateUnreadable(exc) from None


class LogSink(Protocol):
    """Where a step's output goes while it runs (the run's customization.log)."""

    def write(self, text: str) -> None:
        """Append text (one or more whole lines) to the log."""

    @property
    def uri(self) -> str:
        """Where the whole log can be read."""


class NullLog:
    """A sink that drops everything (for calls with nothing worth logging)."""

    uri = ""

    def write(self, text: str) -> None:
        return None


class MemoryLog:
    """A sink that keeps what it was given (a background job's log, written in its place afterwards;
    tests). `uri` is the empty string unless a subclass names one."""

    uri = ""

    def __init__(self) -> None:
        self.chunks: list[str] = []

    def write(self, text: str) -> None:
        self.chunks.append(text)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


class ComputeProvider(ABC):
    """Builds one run of one template through the phases of ARCHITECTURE.md.

    Template lifecycle (once per template, not per run): `create_template` when the template is created
    (the API's create is a long-running operation that ends with its result), `delete_template` when it is
    deleted. Both have a default here (no staging resources, nothing checked), so a provider implements
    them only if it has per-template resources or can check the template's references early.

    Call order for a run: `prepare` → `create_build_env` → `customize` (once per customizer, in
    order) → `validate` → `generalize` → `capture` → `distribute` (once per target and region) →
    `cleanup` (always, on every path, even when `create_build_env` never ran).
    """

    name: str = "abstract"

    @abstractmethod
    def prepare(self, build: BuildInput, log: LogSink) -> PrepareResult | Pending:
        """Resolve the source (`latest` → exact version) and fetch every `scriptUri`/`sourceUri` into
        the run's staging area, checking `sha256Checksum`, before any build resource exists."""

    @abstractmethod
    def create_build_env(
        self, build: BuildInput, prepared: PrepareResult, log: LogSink
    ) -> BuildEnv | Pending:
        """Create the transient build resources from the resolved source."""

    @abstractmethod
    def customize(self, build: BuildInput, env: BuildEnv, index: int, log: LogSink) -> StepResult | Pending:
        """Run `properties.customize[index]` in the build environment."""

    @abstractmethod
    def validate(self, build: BuildInput, env: BuildEnv, log: LogSink) -> StepResult | Pending:
        """Run `properties.validate.inVMValidations` against the customized (not yet generalized) image.
        Returns `skipped` when the template has none."""

    @abstractmethod
    def generalize(self, build: BuildInput, env: BuildEnv, log: LogSink) -> StepResult | Pending:
        """Deprovision (Linux) or sysprep (Windows) the build environment."""

    @abstractmethod
    def capture(self, build: BuildInput, env: BuildEnv, log: LogSink) -> CaptureResult | Pending:
        """Capture the generalized build environment as an image the distributors can copy.

        Besides its private reference, `CaptureResult.image` may carry `sha256` (of the captured disk:
        the subject digest of the run's provenance), `inventory` (what is installed in the final image,
        `imagebuilder.provenance.sbom.Inventory` as JSON; the capture activity moves it to the run's
        store, it never reaches the orchestration history) and `freshness` (pending security updates,
        `imagebuilder.provenance.freshness.freshness_record`). Without them the run has no SBOM or
        provenance (the API answers 404 saying so)."""

    @abstractmethod
    def distribute(
        self,
        build: BuildInput,
        captured: CaptureResult,
        target_index: int,
        region: str,
        log: LogSink,
    ) -> ReplicationResult | Pending:
        """Publish the captured image as `properties.distribute[target_index]` in one region."""

    @abstractmethod
    def cleanup(self, build: BuildInput, *, keep: bool, log: LogSink) -> CleanupReport:
        """Remove every transient resource of the run (found by its identity, not by a handle).
        With `keep=True` (errorHandling `abort`) keep the build environment and say where it is."""

    def create_template(self, template: TemplateInput, log: LogSink) -> TemplateStaging | Pending:
        """Check what AIB checks when a template is created and create its staging resources.

        AIB's create is a long-running operation (provisioningState Creating → Succeeded/Failed) that
        fails, leaving the template in provisioningState Failed with a provisioningError, when:
        the source does not resolve (code `BadPIRSource`, `BadManagedImageSource`,
        `BadSharedImageVersionSource`: "image not found", naming the image and what to do), the identity
        does not exist or cannot be used (`Other`, the message naming the identity), a gallery or image
        definition a distribute target names does not exist (`BadSharedImageDistribute`), or the staging
        resource group cannot be used (`BadStagingResourceGroup`). Check only what this provider can
        check; say nothing about the rest. The codes are the spec's `ProvisioningErrorCode`. Return
        `TemplateStaging(status="failed", error=...)` for those (permanent); raise
        `TransientProviderError` for what is worth retrying. A `Pending` is continued with `poll`.

        Staging resources belong to the template, not to a run: AIB names the group
        `IT_<resourceGroup>_<templateName>_<guid>` unless `properties.stagingResourceGroup` names one (then
        it must be empty or already tagged for this template). Return its id in
        `exact_staging_resource_group` and anything `delete_template` needs in `staging`. Idempotent: a
        second call for the same template (a retried activity) finds what the first made. The API stores
        the result with the template; runs find the group in the stored template's
        `properties.exactStagingResourceGroup` (`BuildInput.template`).

        Default: nothing to check, no staging resources.
        """
        return TemplateStaging(status="succeeded")

    def delete_template(self, template: TemplateInput, log: LogSink) -> CleanupReport | Pending:
        """Remove the template's staging resources (what `create_template` made; `template.staging`).

        AIB deletes a staging group it created, and empties (but keeps) a user-given
        `stagingResourceGroup`. Idempotent: what is already gone is not an error. Called after the
        template's runs have ended (a template with a build in progress cannot be deleted), and also for a
        template whose create failed. Default: nothing to remove.
        """
        return CleanupReport()

    def poll(self, pending: Pending, log: LogSink, build: BuildInput | None = None) -> Any:
        """Continue a long-running operation; returns the original method's result or a new `Pending`.

        `build` is the run's input, which the poll activity always has: a `Pending` need carry only ids
        and step state, not the template again on every poll (durable history keeps each one)."""
        raise NotImplementedError(f"provider {self.name!r} returns no Pending operations")
