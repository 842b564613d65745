"""Runs, run outputs and run logs: every run of a template is kept until the template is deleted.

Runs: partition = subscription|resource group|template, row = run id; outputs: partition = run's | run id,
row = output name; logs: append blobs `{sub}/{rg}/{template}/{run id}/{log name}`. Every update is an
ETag-conditional read-modify-write, retried when another writer got there first."""

from __future__ import annotations

import builtins
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableEntity
from azure.storage.blob import ContainerClient

from imagebuilder.pipeline.messages import RESOURCE_TYPE, RunRef
from imagebuilder.pipeline.plan import forward_sub_state
from imagebuilder.store._storage import (
    DETAILS_BYTES,
    SMALL_BYTES,
    Table,
    check_log_name,
    check_run_id,
    etag_of,
    iso,
    join_keys,
    key,
    now,
    pack,
    parse_iso,
    repack,
    retry_on_conflict,
    unpack,
)
from imagebuilder.store.errors import (
    AlreadyExistsError,
    ConcurrencyError,
    InvalidKeyError,
    NotFoundError,
    RunInProgressError,
)
from imagebuilder.store.logs import BlobLog, scrub_secrets
from imagebuilder.store.records import (
    RUN_STATES,
    RUN_SUB_STATES,
    TERMINAL_RUN_STATES,
    RunBlob,
    RunRecord,
)
from imagebuilder.store.templates import TemplateRepo

RUN_OUTPUT_TYPE = f"{RESOURCE_TYPE}/runOutputs"
DEFAULT_LOG = "customization.log"
OPEN_LOGS = 256  # BlobLogs kept per store (see RunRepo.log)


def run_partition(sub: str, rg: str, template: str) -> str:
    return join_keys(sub, rg, template)


def _ref_of(entity: Mapping[str, Any]) -> RunRef:
    return RunRef(
        subscription_id=str(entity["SubscriptionId"]),
        resource_group=str(entity["ResourceGroup"]),
        template_name=str(entity["TemplateName"]),
        run_id=str(entity["RunId"]),
    )


def scrub_deep(value: Any) -> Any:
    """`value` (JSON) with every string scrubbed of SAS signatures and keys (see `logs.scrub_secrets`):
    run messages, errors and step tails quote URLs and command output."""
    if isinstance(value, str):
        return scrub_secrets(value)
    if isinstance(value, list):
        return [scrub_deep(v) for v in value]
    if isinstance(value, dict):
        return {k: scrub_deep(v) for k, v in value.items()}
    return value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` merged into a copy of `base`: dicts merge recursively, anything else replaces."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


class RunRepo:
    """Runs of templates, their outputs and their logs."""

    def __init__(self, runs: Table, outputs: Table, templates: TemplateRepo, logs: ContainerClient) -> None:
        self._runs = runs
        self._outputs = outputs
        self._templates = templates
        self._logs = logs
        # The BlobLogs in use, so that every activity of a run appends at once instead of first looking
        # up the log's segments and creating its blob again (two storage round trips per activity).
        self._open_logs: OrderedDict[str, BlobLog] = OrderedDict()
        self._log_lock = threading.Lock()

    # -- records -----------------------------------------------------------------------------------

    def _record(self, entity: Mapping[str, Any], etag: str | None = None) -> RunRecord:
        """The record of a stored entity, or (`etag` given) of the entity just written with that ETag."""
        if etag is None:
            assert isinstance(entity, TableEntity), "a written entity's record needs its new etag"
            etag = etag_of(entity)
        ref = _ref_of(entity)
        created = parse_iso(entity.get("CreatedTime"))
        assert created is not None
        return RunRecord(
            run=ref,
            run_state=str(entity["RunState"]),
            run_sub_state=str(entity.get("RunSubState") or "") or None,
            message=str(entity.get("Message") or ""),
            error=unpack(entity, "Error"),
            details=unpack(entity, "Details", {}),
            created_time=created,
            start_time=parse_iso(entity.get("StartTime")),
            end_time=parse_iso(entity.get("EndTime")),
            etag=etag,
            template_snapshot=unpack(entity, "Snapshot", {}),
            log_uri=self.log(ref).uri,
        )

    @staticmethod
    def _keys(run: RunRef) -> tuple[str, str]:
        return run_partition(run.subscription_id, run.resource_group, run.template_name), key(
            check_run_id(run.run_id)
        )

    def _entity(self, run: RunRef) -> TableEntity | None:
        return self._runs.get(*self._keys(run))

    # -- runs --------------------------------------------------------------------------------------

    def create(self, run: RunRef, *, template_snapshot: dict[str, Any]) -> RunRecord:
        """Record a new run (runState Running, runSubState Queued) and make it the template's last run.

        Raises `NotFoundError` if the template does not exist, `RunInProgressError` if another run of
        it is still active (one run at a time) or it is being deleted, `AlreadyExistsError` if the run
        id is taken. The claim is conditional on the template's ETag, so two concurrent creates cannot
        both win.
        """
        check_run_id(run.run_id)
        snapshot = pack("Snapshot", template_snapshot)

        def attempt() -> RunRecord:
            tmpl = self._templates.entity(run.subscription_id, run.resource_group, run.template_name)
            if tmpl is None:
                raise NotFoundError(f"image template {run.template_name!r} does not exist")
            stored = unpack(tmpl, "Body", {})
            if (stored.get("properties") or {}).get("provisioningState") == "Deleting":
                raise RunInProgressError(f"image template {run.template_name!r} is being deleted")
            last_id = str(tmpl.get("LastRunId") or "")
            if last_id:
                last = self.get(run.model_copy(update={"run_id": last_id}))
                if last is not None and last.active:
                    raise RunInProgressError(
                        f"image template {run.template_name!r} already has a run in progress "
                        f"(run {last_id}, {last.run_state}/{last.run_sub_state})",
                        active_run_id=last_id,
                        hint="wait for it to finish or cancel it",
                    )
            pk, rk = self._keys(run)
            stamp = iso(now())
            entity = {
                "PartitionKey": pk,
                "RowKey": rk,
                "SubscriptionId": run.subscription_id,
                "ResourceGroup": run.resource_group,
                "TemplateName": run.template_name,
                "RunId": run.run_id,
                "RunState": "Running",
                "RunSubState": "Queued",
                "Message": "",
                "CreatedTime": stamp,
                "StartTime": stamp,
                "EndTime": "",
                **pack("Details", {}, DETAILS_BYTES),
                **snapshot,
            }
            etag = self._runs.create(entity, f"run {run.run_id!r}")
            try:
                self._templates.set_last_run(tmpl, run.run_id)
            except (ConcurrencyError, NotFoundError):
                self._runs.delete(pk, rk)
                raise
            return self._record(entity, etag)  # what was written (no re-read before the build starts)

        return retry_on_conflict(f"start run {run.run_id!r}", attempt)

    def get(self, run: RunRef) -> RunRecord | None:
        entity = self._entity(run)
        return None if entity is None else self._record(entity)

    def list(self, sub: str, rg: str, template_name: str) -> list[RunRecord]:
        """Every run of the template, oldest first."""
        entities = self._runs.query("PartitionKey eq @pk", {"pk": run_partition(sub, rg, template_name)})
        records = [self._record(e) for e in entities]
        return sorted(records, key=lambda r: (r.created_time, r.run.run_id))

    def latest(self, sub: str, rg: str, template_name: str) -> RunRecord | None:
        """The template's last run (the one `lastRunStatus` and runOutputs describe), or None."""
        tmpl = self._templates.get(sub, rg, template_name)
        if tmpl is not None and tmpl.last_run_id:
            record = self.get(
                RunRef(
                    subscription_id=sub,
                    resource_group=rg,
                    template_name=template_name,
                    run_id=tmpl.last_run_id,
                )
            )
            if record is not None:
                return record
        runs = self.list(sub, rg, template_name)
        return runs[-1] if runs else None

    def set_status(
        self,
        run: RunRef,
        *,
        run_state: str | None = None,
        run_sub_state: str | None = None,
        message: str | None = None,
        error: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
        before_write: Callable[[RunRecord], None] | None = None,
    ) -> RunRecord:
        """Update the run; fields left None are kept. Retried on ETag conflicts, so concurrent writers
        never lose each other's updates. One read and one conditional write (the record returned is the
        one written); `before_write(current)` sees the record as read, before each write attempt (the
        `run_status` activity publishes lifecycle events from it: at least once, never after the write).

        `startTime` is set on the first Running, `endTime` on the first terminal state. A terminal
        state is final: later state, sub-state, message and error changes are ignored (details still
        merge); Canceling does not go back to Running, nor a sub-state to an earlier phase. `details`
        is merged key by key into the stored details (top-level keys replace).
        """
        message = None if message is None else scrub_secrets(message)
        error = None if error is None else scrub_deep(error)
        details = None if details is None else scrub_deep(details)
        if run_state is not None and run_state not in RUN_STATES:
            raise ValueError(f"runState {run_state!r} is not one of {', '.join(RUN_STATES)}")
        if run_sub_state is not None and run_sub_state not in RUN_SUB_STATES:
            raise ValueError(f"runSubState {run_sub_state!r} is not one of {', '.join(RUN_SUB_STATES)}")

        def attempt() -> RunRecord:
            entity = self._entity(run)
            if entity is None:
                raise NotFoundError(
                    f"run {run.run_id!r} of image template {run.template_name!r} does not exist"
                )
            updated: dict[str, Any] = dict(entity)
            final = entity["RunState"] in TERMINAL_RUN_STATES
            stamp = iso(now())
            # A cancellation, once asked for, is not undone by a progress report saying Running.
            canceling = entity["RunState"] == "Canceling" and run_state == "Running"
            if not final:
                if run_state is not None and not canceling:
                    updated["RunState"] = run_state
                    if run_state == "Running" and not updated.get("StartTime"):
                        updated["StartTime"] = stamp
                    if run_state in TERMINAL_RUN_STATES:
                        updated["EndTime"] = stamp
                        if not updated.get("StartTime"):
                            updated["StartTime"] = stamp
                if run_sub_state is not None:  # never back to an earlier phase (a late report)
                    updated["RunSubState"] = forward_sub_state(entity.get("RunSubState"), run_sub_state)
                if message is not None:
                    updated["Message"] = message
                if error is not None:
                    updated = repack(updated, "Error", error, SMALL_BYTES)
            if details:
                merged = {**unpack(entity, "Details", {}), **details}
                updated = repack(updated, "Details", merged, DETAILS_BYTES)
            if before_write is not None:
                before_write(self._record(entity))
            etag = self._runs.replace(updated, etag_of(entity), f"run {run.run_id!r}")
            return self._record(updated, etag)

        return retry_on_conflict(f"update run {run.run_id!r}", attempt)

    def add_step(self, run: RunRef, step: dict[str, Any]) -> RunRecord:
        """Append one step report to `details.steps` (replacing an earlier report with the same `name`);
        secrets in it (a SAS in a tail line) are scrubbed."""
        step = scrub_deep(step)

        def attempt() -> RunRecord:
            entity = self._entity(run)
            if entity is None:
                raise NotFoundError(
                    f"run {run.run_id!r} of image template {run.template_name!r} does not exist"
                )
            details = unpack(entity, "Details", {})
            steps = [s for s in details.get("steps", []) if s.get("name") != step.get("name")]
            details["steps"] = [*steps, step]
            updated = repack(entity, "Details", details, DETAILS_BYTES)
            etag = self._runs.replace(updated, etag_of(entity), f"run {run.run_id!r}")
            return self._record(updated, etag)

        return retry_on_conflict(f"update run {run.run_id!r}", attempt)

    # -- outputs -----------------------------------------------------------------------------------

    @staticmethod
    def _output_pk(run: RunRef) -> str:
        return join_keys(run.subscription_id, run.resource_group, run.template_name, check_run_id(run.run_id))

    def put_output(self, run: RunRef, name: str, output: dict[str, Any]) -> None:
        """Record run output `name` (ARM RunOutput properties: artifactId, artifactUri,
        provisioningState, plus our per-region status). Merged recursively into what is stored (dicts
        merge, other values replace) under ETag retry, so parallel per-region writers lose nothing."""
        pk, rk = self._output_pk(run), key(name)
        fresh = [True]  # an output is mostly written once: try to create it before reading it

        def attempt() -> None:
            entity = None if fresh[0] else self._outputs.get(pk, rk)
            if entity is None:
                fresh[0] = False
                try:
                    self._outputs.create(
                        {
                            "PartitionKey": pk,
                            "RowKey": rk,
                            "Name": name,
                            "CreatedAt": iso(now()),
                            **pack("Properties", output, SMALL_BYTES),
                        },
                        f"run output {name!r}",
                    )
                except AlreadyExistsError as exc:
                    raise ConcurrencyError("run output exists: merge into it") from exc
                return
            merged = deep_merge(unpack(entity, "Properties", {}), output)
            self._outputs.replace(
                repack(entity, "Properties", merged, SMALL_BYTES), etag_of(entity), f"run output {name!r}"
            )

        retry_on_conflict(f"record run output {name!r}", attempt)

    def _output_resource(self, run: RunRef, entity: TableEntity) -> dict[str, Any]:
        name = str(entity["Name"])
        return {
            "id": f"{run.template_id}/runOutputs/{name}",
            "name": name,
            "type": RUN_OUTPUT_TYPE,
            "properties": unpack(entity, "Properties", {}),
        }

    def outputs(self, run: RunRef) -> builtins.list[dict[str, Any]]:
        """The run's outputs as ARM RunOutput resources ({id, name, type, properties}), by name."""
        entities = self._outputs.query("PartitionKey eq @pk", {"pk": self._output_pk(run)})
        return [self._output_resource(run, e) for e in entities]

    def output(self, run: RunRef, name: str) -> dict[str, Any] | None:
        entity = self._outputs.get(self._output_pk(run), key(name))
        return None if entity is None else self._output_resource(run, entity)

    # -- logs --------------------------------------------------------------------------------------

    def log(self, run: RunRef, name: str = DEFAULT_LOG) -> BlobLog:
        """The run's log `name` as an append blob (`.write(text)`, `.uri`, `.read()`); the same object for
        the same log while it is among the OPEN_LOGS most recently used."""
        blob = "/".join(
            (
                key(run.subscription_id),
                key(run.resource_group),
                key(run.template_name),
                check_run_id(run.run_id),
                check_log_name(name),
            )
        )
        with self._log_lock:
            found = self._open_logs.pop(blob, None) or BlobLog(self._logs, blob)
            self._open_logs[blob] = found  # most recently used last
            while len(self._open_logs) > OPEN_LOGS:
                self._open_logs.popitem(last=False)
        return found

    # -- SBOM inventory ------------------------------------------------------------------------------

    def _sbom_blob(self, run: RunRef) -> str:
        # Next to the run's logs: a log name is one path segment, so `logs/{logName}` never reaches it,
        # and delete_all removes it with them.
        return "/".join(
            (
                key(run.subscription_id),
                key(run.resource_group),
                key(run.template_name),
                check_run_id(run.run_id),
                "sbom",
                "inventory.json",
            )
        )

    def put_sbom_inventory(self, run: RunRef, inventory: dict[str, Any]) -> str:
        """Store what the provider read from the run's image (`provenance.sbom.Inventory` as JSON); the
        SBOM of every run output is built from it. Returns the blob's name."""
        name = self._sbom_blob(run)
        data = json.dumps(inventory, separators=(",", ":"), sort_keys=True).encode()
        self._logs.upload_blob(name, data, overwrite=True)
        return name

    def sbom_inventory(self, run: RunRef) -> dict[str, Any] | None:
        """The run's stored inventory, or None when its capture recorded none."""
        try:
            data = self._logs.download_blob(self._sbom_blob(run)).readall()
        except ResourceNotFoundError:
            return None
        value = json.loads(data)
        return value if isinstance(value, dict) else None

    def blobs(self) -> Iterator[RunBlob]:
        """Every blob of the run-log container, uncommitted ones included, each with the run its name
        belongs to: what a leak audit compares with the runs the store knows."""
        committed = {b.name for b in self._logs.list_blobs()}
        for blob in self._logs.list_blobs(include=["uncommittedblobs"]):
            parts = str(blob.name).split("/")
            run = None
            if len(parts) >= 5 and all(parts[:4]):
                try:
                    run = RunRef(
                        subscription_id=unquote(parts[0]),
                        resource_group=unquote(parts[1]),
                        template_name=unquote(parts[2]),
                        run_id=check_run_id(parts[3]),
                    )
                except (ValueError, InvalidKeyError):
                    run = None
            yield RunBlob(blob.name, run, blob.name in committed, int(blob.size or 0))

    # -- removal -----------------------------------------------------------------------------------

    def delete_all(self, sub: str, rg: str, template_name: str) -> None:
        """Remove every run of the template with its outputs and logs."""
        for record in self.list(sub, rg, template_name):
            pk = self._output_pk(record.run)
            for entity in self._outputs.query(
                "PartitionKey eq @pk", {"pk": pk}, select=["PartitionKey", "RowKey"]
            ):
                self._outputs.delete(pk, str(entity["RowKey"]))
        prefix = "/".join((key(sub), key(rg), key(template_name))) + "/"
        for blob in self._logs.list_blobs(name_starts_with=prefix):
            self._logs.delete_blob(blob.name)
        for record in self.list(sub, rg, template_name):
            self._runs.delete(*self._keys(record.run))
