"""The exceptions the store raises on purpose; every one says what the caller can do.

Exception tree::

    StoreError                      base of everything the store raises on purpose
    ├── NotFoundError               the template / run / trigger / operation does not exist
    ├── ConflictError               the write lost against another writer or the resource's state
    │   ├── AlreadyExistsError      create of something that exists (re-read it, or replace with its etag)
    │   ├── ConcurrencyError        ETag mismatch: someone else wrote first (re-read and retry)
    │   └── RunInProgressError      one run at a time per template; or the template is being deleted
    ├── TooLargeError               the JSON does not fit one storage entity (about 900 KB compressed)
    ├── InvalidKeyError             a name that cannot be a storage key (run id, log name)
    └── InvalidContinuationError    a paging token that this store did not issue
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of the errors the store raises on purpose. `hint` says what the caller can do."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message if hint is None else f"{message} ({hint})")
        self.message = message
        self.hint = hint


class NotFoundError(StoreError):
    """The addressed entity does not exist."""


class ConflictError(StoreError):
    """The write conflicts with another writer or with the resource's current state."""


class AlreadyExistsError(ConflictError):
    """Create of an entity that already exists."""


class ConcurrencyError(ConflictError):
    """The entity changed since it was read (ETag mismatch)."""


class RunInProgressError(ConflictError):
    """Another run of the template is still active, or the template is being deleted."""

    def __init__(self, message: str, *, active_run_id: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.active_run_id = active_run_id


class TooLargeError(StoreError):
    """The value does not fit in one storage entity."""


class InvalidKeyError(StoreError):
    """A name that cannot be used as a storage key."""


class InvalidContinuationError(StoreError):
    """A continuation token this store did not issue (or that was altered)."""
