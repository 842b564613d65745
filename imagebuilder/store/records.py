"""What the store returns: frozen records of templates, runs, triggers and async operations."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.pipeline.plan import SUB_STATES

T = TypeVar("T")

RUN_STATES = ("Running", "Succeeded", "PartiallySucceeded", "Failed", "Canceling", "Canceled")
TERMINAL_RUN_STATES = frozenset({"Succeeded", "PartiallySucceeded", "Failed", "Canceled"})
RUN_SUB_STATES = SUB_STATES
OPERATION_STATES = ("InProgress", "Succeeded", "Failed", "Canceled")
TERMINAL_OPERATION_STATES = frozenset({"Succeeded", "Failed", "Canceled"})


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing; `continuation` is an opaque token for the next page (None at the end)."""

    items: list[T]
    continuation: str | None = None


@dataclass(frozen=True)
class StoredTemplate:
    """One image template as stored: the ARM resource JSON, its ETag and bookkeeping."""

    subscription_id: str
    resource_group: str
    name: str
    resource: dict[str, Any]
    etag: str
    created_at: datetime
    last_modified_at: datetime
    last_run_id: str | None = None
    service: dict[str, Any] = field(default_factory=dict)
    """Service-side state never returned by GET: create warnings, the create operation, staging."""

    @property
    def provisioning_state(self) -> str | None:
        props = self.resource.get("properties")
        state = props.get("provisioningState") if isinstance(props, dict) else None
        return state if isinstance(state, str) else None


@dataclass(frozen=True)
class RunRecord:
    """One run of one template (every run is kept until the template is deleted).

    `run_state` is AIB's runState (Running, Succeeded, PartiallySucceeded, Failed, Canceling, Canceled),
    `run_sub_state` its runSubState (Queued, Building, Customizing, Optimizing, Validating, Distributing).
    `details` holds what the build reports beyond AIB (resolved source, steps, failed step, ...).
    """

    run: RunRef
    run_state: str
    run_sub_state: str | None
    message: str
    error: dict[str, Any] | None
    details: dict[str, Any]
    created_time: datetime
    start_time: datetime | None
    end_time: datetime | None
    etag: str
    template_snapshot: dict[str, Any] = field(repr=False)
    log_uri: str = ""

    @property
    def terminal(self) -> bool:
        return self.run_state in TERMINAL_RUN_STATES

    @property
    def active(self) -> bool:
        return not self.terminal

    def last_run_status(self) -> dict[str, Any]:
        """AIB's `properties.lastRunStatus` for this run."""
        out: dict[str, Any] = {"runState": self.run_state, "message": self.message}
        if self.run_sub_state and not self.terminal:
            out["runSubState"] = self.run_sub_state
        if self.start_time is not None:
            out["startTime"] = _iso(self.start_time)
        if self.end_time is not None:
            out["endTime"] = _iso(self.end_time)
        return out


@dataclass(frozen=True)
class RunBlob:
    """One blob of the run-log container (a log, a log segment, an SBOM inventory) as listed.

    `run` is the run its name belongs to (None when the name is not a run's); `committed` is False for a
    blob that only has staged blocks (an upload that never committed)."""

    name: str
    run: RunRef | None
    committed: bool
    size: int


@dataclass(frozen=True)
class StoredTrigger:
    """One trigger of a template (`Microsoft.VirtualMachineImages/imageTemplates/triggers`)."""

    subscription_id: str
    resource_group: str
    template_name: str
    name: str
    resource: dict[str, Any]
    etag: str
    created_at: datetime
    last_modified_at: datetime


@dataclass(frozen=True)
class OperationRecord:
    """An ARM asynchronous operation (what `Azure-AsyncOperation` and `Location` point at).

    `kind` is what started it (`create`, `update`, `delete`, `run`, `cancel`, `trigger-create`, ...);
    a `run`/`cancel` operation follows the run named by `run_id` and completes when the build does.
    `result` is what the operation's `Location` returns once done (a resource body, or None for 204).
    """

    subscription_id: str
    location: str
    operation_id: str
    kind: str
    resource_id: str
    status: str
    start_time: datetime
    end_time: datetime | None
    error: dict[str, Any] | None
    run_id: str | None
    result: dict[str, Any] | None
    etag: str

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_OPERATION_STATES
