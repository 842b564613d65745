"""Templates, runs, run outputs, triggers and logs on Azure Storage (Azurite locally).

The only place with storage clients (azure-data-tables, azure-storage-blob). Public interface::

    open_store(connection_string, *, prefix="aib") -> Store      # tables/containers created once per process
    Store.templates: TemplateRepo
        get(sub, rg, name) -> StoredTemplate | None              # .resource (ARM JSON) .etag .last_run_id
        create(sub, rg, name, resource) -> StoredTemplate        # AlreadyExistsError
        replace(sub, rg, name, resource, *, etag) -> StoredTemplate   # ConcurrencyError on ETag mismatch
        delete(sub, rg, name, *, etag=None)
        list_by_subscription(sub, *, page_size, continuation) / list_by_rg(sub, rg, ...) -> Page
    Store.runs: RunRepo
        create(run, *, template_snapshot) -> RunRecord           # RunInProgressError: one run at a time
        get(run) / latest(sub, rg, name) -> RunRecord | None ; list(sub, rg, name) -> [RunRecord]
        set_status(run, *, run_state, run_sub_state, message, error, details, before_write) -> RunRecord
        add_step(run, step) ; put_output(run, name, output) ; outputs(run) ; output(run, name)
        log(run, name="customization.log") -> BlobLog           # .write(text) .uri .read()
        blobs() -> Iterator[RunBlob]                             # run-log container listing (leak audits)
    Store.triggers: TriggerRepo   get / put / delete / list / list_all
    Store.operations: OperationRepo   create / get / complete   (ARM async operations)
    Store.purge_template(sub, rg, name, *, etag=None)
    open_events(connection_string) -> EventQueue     # lifecycle CloudEvents queue: publish / receive
    open_automation(connection_string) -> Automation # cross-template listings, trigger evaluation state

Errors: see `imagebuilder.store.errors` (StoreError and its tree).
"""

from imagebuilder.store.automation import Automation, open_automation
from imagebuilder.store.errors import (
    AlreadyExistsError,
    ConcurrencyError,
    ConflictError,
    InvalidContinuationError,
    InvalidKeyError,
    NotFoundError,
    RunInProgressError,
    StoreError,
    TooLargeError,
)
from imagebuilder.store.events import EVENTS_QUEUE, EventQueue, open_events
from imagebuilder.store.logs import BlobLog
from imagebuilder.store.operations import OperationRepo
from imagebuilder.store.records import (
    RUN_STATES,
    RUN_SUB_STATES,
    TERMINAL_OPERATION_STATES,
    TERMINAL_RUN_STATES,
    OperationRecord,
    Page,
    RunBlob,
    RunRecord,
    StoredTemplate,
    StoredTrigger,
)
from imagebuilder.store.runs import RunRepo
from imagebuilder.store.store import Store, open_store
from imagebuilder.store.templates import TemplateRepo
from imagebuilder.store.triggers import TriggerRepo

__all__ = [
    "EVENTS_QUEUE",
    "RUN_STATES",
    "RUN_SUB_STATES",
    "TERMINAL_OPERATION_STATES",
    "TERMINAL_RUN_STATES",
    "AlreadyExistsError",
    "Automation",
    "BlobLog",
    "ConcurrencyError",
    "ConflictError",
    "EventQueue",
    "InvalidContinuationError",
    "InvalidKeyError",
    "NotFoundError",
    "OperationRecord",
    "OperationRepo",
    "Page",
    "RunBlob",
    "RunInProgressError",
    "RunRecord",
    "RunRepo",
    "Store",
    "StoreError",
    "StoredTemplate",
    "StoredTrigger",
    "TemplateRepo",
    "TooLargeError",
    "TriggerRepo",
    "open_automation",
    "open_events",
    "open_store",
]
