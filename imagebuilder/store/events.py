"""The lifecycle event queue: CloudEvents (see `imagebuilder.pipeline.events`) on the storage queue
`imagebuilder-events`, one JSON event per message, base64-encoded like the Functions host's default
`messageEncoding` so that a queue-triggered function can consume it as well as any queue client.

`open_events(connection_string) -> EventQueue`: `.publish(events)` in order, `.receive()` for consumers.
Errors: the Azure SDK's (`azure.core.exceptions.AzureError`); publishers decide whether to swallow them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import (
    QueueClient,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from imagebuilder.store._storage import expand_connection_string, identity_endpoints

EVENTS_QUEUE = "imagebuilder-events"
_log = logging.getLogger("imagebuilder.store.events")
_BACKOFF_SECONDS = 30  # after a failed publish, skip publishing this long (never stall builds)
_broken_until = 0.0
_LOCK = threading.Lock()
_OPEN: dict[tuple[str, str], EventQueue] = {}


def _queue_client(connection_string: str, queue: str) -> QueueClient:
    conn = expand_connection_string(connection_string)
    identity = identity_endpoints(conn)
    policies: dict[str, Any] = {
        "message_encode_policy": TextBase64EncodePolicy(),
        "message_decode_policy": TextBase64DecodePolicy(),
        "retry_total": 2,
        "connection_timeout": 10,
    }
    if identity is None:
        return QueueClient.from_connection_string(conn, queue, **policies)
    parts = {
        k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in conn.split(";")) if k.strip()
    }
    url = parts.get("queueendpoint") or identity.blob_url.replace(".blob.", ".queue.", 1)
    service = QueueServiceClient(url, credential=identity.credential())
    return QueueClient(service.url, queue, credential=identity.credential(), **policies)


class EventQueue:
    """One storage queue of CloudEvents (created on first use)."""

    def __init__(self, connection_string: str, queue: str = EVENTS_QUEUE) -> None:
        self.name = queue
        self._client = _queue_client(connection_string, queue)
        try:
            self._client.create_queue()
        except ResourceExistsError:
            pass

    def publish(self, events: Sequence[dict[str, Any]]) -> None:
        """Send each event, in order (a message per event; consumers dedupe retries by `id`)."""
        for event in events:
            self._client.send_message(json.dumps(event, separators=(",", ":"), default=str))

    def receive(self, *, max_messages: int = 32, delete: bool = True) -> list[dict[str, Any]]:
        """Up to `max_messages` events in queue order (deleted once read unless `delete=False`)."""
        out: list[dict[str, Any]] = []
        for message in self._client.receive_messages(
            messages_per_page=min(32, max_messages), max_messages=max_messages
        ):
            try:
                event = json.loads(message.content)
            except ValueError:
                event = {"unreadable": str(message.content)[:200]}
            if isinstance(event, dict):
                out.append(event)
            if delete:
                self._client.delete_message(message)
        return out


def open_events(connection_string: str, queue: str = EVENTS_QUEUE) -> EventQueue:
    """The process-wide `EventQueue` for this account and queue."""
    cache_key = (connection_string, queue)
    with _LOCK:
        found = _OPEN.get(cache_key)
        if found is None:
            found = EventQueue(connection_string, queue)
            _OPEN[cache_key] = found
        return found


def publish_quietly(connection_string: str, events: Sequence[dict[str, Any]]) -> None:
    """Publish `events` in order; a queue outage is logged and never fails the caller (a build must
    not fail because nobody can hear about it)."""
    global _broken_until
    if not events or time.monotonic() < _broken_until:
        return
    try:
        open_events(connection_string).publish(events)
    except Exception as exc:
        _broken_until = time.monotonic() + _BACKOFF_SECONDS
        _log.warning(
            "publishing %d lifecycle event(s) failed (next try in %ds): %s",
            len(events),
            _BACKOFF_SECONDS,
            exc,
        )
