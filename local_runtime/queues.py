"""Queue triggers and queue output bindings on Azure Storage queues (Azurite locally), with the host's rules:
messages are leased while a function runs, deleted on success, made visible again after host.json
`visibilityTimeout` on failure, and moved to `<queue>-poison` once `maxDequeueCount` is reached.
`messageEncoding` (base64 | none) applies to both directions.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import azure.functions as func
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions.queue import QueueMessage as WorkerQueueMessage
from azure.storage.queue import QueueMessage as StorageMessage
from azure.storage.queue.aio import QueueClient

from local_runtime.config import QueuesConfig
from local_runtime.indexing import FunctionInfo
from local_runtime.invoke import Invoker, OutputWriter, convert_text
from local_runtime.storage import BindingError, Storage, resolve_expression
from local_runtime.timers import disabled

log = logging.getLogger("local_runtime.queues")

LEASE_SECONDS = 600  # the host keeps a message invisible while its function runs, renewing it


def lease_seconds() -> int:
    """The running-message lease; LOCAL_RUNTIME_QUEUE_LEASE_SECONDS overrides it (tests)."""
    return max(2, int(os.environ.get("LOCAL_RUNTIME_QUEUE_LEASE_SECONDS") or LEASE_SECONDS))


MIN_POLL = 0.1


def encode(body: bytes, encoding: str) -> str:
    return base64.b64encode(body).decode("ascii") if encoding == "base64" else body.decode("utf-8")


def decode(content: str, encoding: str) -> bytes:
    if encoding == "base64":
        return base64.b64decode(content.encode("ascii"), validate=True)
    return content.encode("utf-8")


def to_bytes(value: Any, what: str) -> bytes:
    """A queue output value as message bytes: str, bytes, func.QueueMessage, or JSON-serializable."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, func.QueueMessage):
        return value.get_body()
    try:
        return json.dumps(value).encode("utf-8")
    except TypeError as exc:
        raise BindingError(f"{what}: cannot send a {type(value).__name__} as a queue message") from exc


async def ensure_queue(client: QueueClient, known: set[str]) -> None:
    key = f"{client.url}"
    if key in known:
        return
    with contextlib.suppress(ResourceExistsError):
        await client.create_queue()
    known.add(key)


def output_writer(storage: Storage, config: QueuesConfig) -> OutputWriter:
    """The `queue` output binding: one message per value (a list sends one message per item)."""
    created: set[str] = set()

    async def write(binding: dict[str, Any], value: Any, metadata: Mapping[str, Any]) -> None:
        what = f"queue output {binding.get('name')!r}"
        name = resolve_expression(str(binding.get("queueName", "")), metadata, what).lower()
        client = storage.queue_service(binding.get("connection")).get_queue_client(name)
        await ensure_queue(client, created)
        items = value if isinstance(value, list) else [value]
        for item in items:
            await client.send_message(encode(to_bytes(item, what), config.message_encoding))

    return write


def _message_metadata(msg: StorageMessage, body: bytes) -> dict[str, Any]:
    def iso(t: datetime | None) -> str | None:
        return t.isoformat() if t else None

    meta: dict[str, Any] = {}
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            meta.update(parsed)
    meta.update(
        {
            "Id": msg.id,
            "DequeueCount": msg.dequeue_count,
            "InsertionTime": iso(msg.inserted_on),
            "ExpirationTime": iso(msg.expires_on),
            "NextVisibleTime": iso(msg.next_visible_on),
            "PopReceipt": msg.pop_receipt,
        }
    )
    with contextlib.suppress(UnicodeDecodeError):
        meta["QueueTrigger"] = body.decode("utf-8")
    return meta


class QueueListener:
    """Polls one queue for one function and applies the host's retry and poison rules."""

    def __init__(self, fn: FunctionInfo, invoker: Invoker, storage: Storage, config: QueuesConfig) -> None:
        self.fn = fn
        self.name = fn.name
        self.invoker = invoker
        self.config = config
        where = f"function {fn.name!r} queueName"
        self.queue_name = resolve_expression(str(fn.trigger.get("queueName", "")), {}, where).lower()
        self.client = storage.queue_service(fn.trigger.get("connection")).get_queue_client(self.queue_name)
        self.poison = storage.queue_service(fn.trigger.get("connection")).get_queue_client(
            f"{self.queue_name}-poison"
        )
        self._created: set[str] = set()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        log.info("Queue trigger '%s' listening on queue '%s'", self.name, self.queue_name)
        await ensure_queue(self.client, self._created)
        interval = MIN_POLL
        max_poll = max(self.config.max_polling_interval.total_seconds(), MIN_POLL)
        threshold = self.config.new_batch_threshold
        if threshold is None:
            threshold = self.config.batch_size // 2
        in_flight: set[asyncio.Task[None]] = set()
        try:
            await self._poll(in_flight, interval, max_poll, threshold)
        finally:
            # running invocations finish (the host drains); a cancel from the host cancels them too
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _poll(
        self, in_flight: set[asyncio.Task[None]], interval: float, max_poll: float, threshold: int
    ) -> None:
        """The host's batching: fetch `batchSize` messages while at most `newBatchThreshold` run."""
        while not self._stopping.is_set():
            if len(in_flight) > threshold:
                await asyncio.wait(in_flight, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                pager = self.client.receive_messages(
                    messages_per_page=self.config.batch_size,
                    max_messages=self.config.batch_size,
                    visibility_timeout=lease_seconds(),
                )
                batch = [m async for m in pager]
            except ResourceNotFoundError:
                self._created.discard(self.client.url)
                await ensure_queue(self.client, self._created)
                batch = []
            except Exception as exc:  # storage hiccups: keep polling, as the host's listener does
                log.warning("queue %s: receive failed: %s", self.queue_name, exc)
                batch = []
            if not batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), interval)
                interval = min(interval * 2, max_poll)
                continue
            interval = MIN_POLL
            for m in batch:
                task = asyncio.create_task(self.process_safely(m))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)

    async def process_safely(self, msg: StorageMessage) -> None:
        try:
            await self.process(msg)
        except Exception:  # one bad message must not stop the listener; it reappears after its lease
            log.exception("queue %s: processing message %s failed", self.queue_name, msg.id)

    async def process(self, msg: StorageMessage) -> None:
        max_count = self.config.max_dequeue_count
        if (msg.dequeue_count or 0) > max_count:
            await self.move_to_poison(msg)
            return
        ok = False
        receipt = [msg.pop_receipt]
        finished = asyncio.Event()
        renewal = asyncio.create_task(self._renew(msg, receipt, finished))
        try:
            ok = await self._invoke(msg)
        finally:
            finished.set()  # a renewal in progress completes, so the receipt we settle with is current
            await renewal
        msg.pop_receipt = receipt[0]
        try:
            if ok:
                await self.client.delete_message(msg.id, msg.pop_receipt)
            elif (msg.dequeue_count or 0) >= max_count:
                await self.move_to_poison(msg)
            else:
                await self.client.update_message(
                    msg.id,
                    msg.pop_receipt,
                    visibility_timeout=int(self.config.visibility_timeout.total_seconds()),
                )
        except ResourceNotFoundError:
            log.warning("queue %s: message %s was gone before it could be settled", self.queue_name, msg.id)

    async def _renew(self, msg: StorageMessage, receipt: list[str | None], finished: asyncio.Event) -> None:
        """Keep a running message invisible: renew its lease every half lease, as the host does."""
        lease = lease_seconds()
        while True:
            try:
                await asyncio.wait_for(finished.wait(), lease / 2)
                return
            except TimeoutError:
                pass
            try:
                updated = await self.client.update_message(msg.id, receipt[0], visibility_timeout=lease)
                receipt[0] = updated.pop_receipt
            except Exception as exc:
                log.warning(
                    "queue %s: renewing the lease of message %s failed: %s", self.queue_name, msg.id, exc
                )

    async def _invoke(self, msg: StorageMessage) -> bool:
        ok = False
        try:
            body = decode(msg.content, self.config.message_encoding)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            log.error(
                "queue %s: message %s is not valid %s (host.json extensions.queues.messageEncoding)",
                self.queue_name,
                msg.id,
                self.config.message_encoding,
            )
        else:
            message = WorkerQueueMessage(
                id=msg.id,
                body=body,
                dequeue_count=msg.dequeue_count,
                expiration_time=msg.expires_on,
                insertion_time=msg.inserted_on,
                time_next_visible=msg.next_visible_on,
                pop_receipt=msg.pop_receipt,
            )
            result = await self.invoker.invoke(
                self.fn,
                lambda ann: (
                    message if ann in (None, func.QueueMessage) else convert_text(body, ann, self.fn.trigger)
                ),
                _message_metadata(msg, body),
                f"New queue message detected on '{self.queue_name}'.",
                retry_count=(msg.dequeue_count or 1) - 1,
            )
            ok = result.ok
        return ok

    async def move_to_poison(self, msg: StorageMessage) -> None:
        log.warning(
            "Message has reached MaxDequeueCount of %d. Moving message to queue '%s-poison'.",
            self.config.max_dequeue_count,
            self.queue_name,
        )
        await ensure_queue(self.poison, self._created)
        await self.poison.send_message(msg.content)
        await self.client.delete_message(msg.id, msg.pop_receipt)

    def stop(self) -> None:
        self._stopping.set()


def listeners(
    functions: list[FunctionInfo], invoker: Invoker, storage: Storage, config: QueuesConfig
) -> Iterator[QueueListener]:
    for fn in functions:
        if fn.trigger_type == "queueTrigger" and not disabled(fn):
            yield QueueListener(fn, invoker, storage, config)


async def invoke_manually(fn: FunctionInfo, invoker: Invoker, text: str) -> None:
    """The admin API's `POST /admin/functions/<queue fn>` with `{"input": text}`: one invocation, no queue."""
    body = text.encode("utf-8")
    message = WorkerQueueMessage(id="admin", body=body, dequeue_count=1)
    await invoker.invoke(
        fn,
        lambda ann: message if ann in (None, func.QueueMessage) else convert_text(body, ann, fn.trigger),
        {"QueueTrigger": text},
        "This function was programmatically called via the host APIs.",
    )
