"""Blob triggers (a polling scan of the container, about every second), blob input and output bindings.

Each blob version (ETag) fires a function once: receipts live in `<state>/blob_receipts/<function>.json`
and survive restarts. A failing invocation is retried up to host.json `extensions.queues.maxDequeueCount`
times (5 by default), then a message goes to the `webjobs-blobtrigger-poison` queue, as on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import azure.functions as func
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.functions.blob import InputStream
from azure.storage.blob.aio import ContainerClient

from local_runtime.config import HostConfig
from local_runtime.indexing import FunctionInfo
from local_runtime.invoke import InputReader, Invoker, OutputWriter, convert_text
from local_runtime.queues import encode, ensure_queue
from local_runtime.storage import BindingError, Storage, resolve_expression
from local_runtime.timers import disabled

log = logging.getLogger("local_runtime.blobs")

POISON_QUEUE = "webjobs-blobtrigger-poison"
SCAN_INTERVAL = 1.0


def split_path(path: str, where: str) -> tuple[str, str]:
    """`container/blob/path` -> (container, blob path); the container must be literal for triggers."""
    path = path.strip("/")
    if "/" not in path:
        return path, ""
    container, rest = path.split("/", 1)
    if not container:
        raise BindingError(f"{where}: path {path!r} must start with a container name")
    return container, rest


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A blob name pattern with `{param}` binding expressions as a regex with named groups."""
    rx, pos = "", 0
    for m in re.finditer(r"\{([A-Za-z_][\w]*)\}", pattern):
        rx += re.escape(pattern[pos : m.start()]) + f"(?P<{m.group(1)}>.+?)"
        pos = m.end()
    return re.compile(rx + re.escape(pattern[pos:]))


def _to_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, func.InputStream):
        return bytes(value.read())
    raise BindingError(
        f"{what}: a blob output takes str, bytes or func.InputStream, not {type(value).__name__}"
    )


def _stream(data: bytes, container: str, blob: str, url: str, props: dict[str, Any]) -> InputStream:
    return InputStream(
        data=data,
        name=f"{container}/{blob}",
        uri=url,
        length=len(data),
        blob_properties=props,
        metadata=dict(props.get("Metadata") or {}),
    )


def _convert(data: bytes, ann: Any, binding: Mapping[str, Any], stream: InputStream) -> Any:
    if ann in (str, bytes) or str(binding.get("dataType", "")).lower() in ("string", "binary"):
        return convert_text(data, ann, binding)
    return stream


def output_writer(storage: Storage) -> OutputWriter:
    """The `blob` output binding: uploads (overwriting) to the resolved path, creating the container."""
    created: set[str] = set()

    async def write(binding: dict[str, Any], value: Any, metadata: Mapping[str, Any]) -> None:
        what = f"blob output {binding.get('name')!r}"
        container, blob = split_path(resolve_expression(str(binding.get("path", "")), metadata, what), what)
        cc = storage.blob_service(binding.get("connection")).get_container_client(container)
        if container not in created:
            with contextlib.suppress(ResourceExistsError):
                await cc.create_container()
            created.add(container)
        await cc.upload_blob(blob, _to_bytes(value, what), overwrite=True)

    return write


def input_reader(storage: Storage) -> InputReader:
    """The `blob` input binding: the blob's content (None when it does not exist), by annotation."""

    async def read(binding: dict[str, Any], metadata: Mapping[str, Any], ann: Any) -> Any:
        what = f"blob input {binding.get('name')!r}"
        container, blob = split_path(resolve_expression(str(binding.get("path", "")), metadata, what), what)
        client = storage.blob_service(binding.get("connection")).get_blob_client(container, blob)
        try:
            downloader = await client.download_blob()
            data = await downloader.readall()
        except ResourceNotFoundError:
            return None
        props = {"Length": len(data), "ETag": downloader.properties.etag}
        return _convert(data, ann, binding, _stream(data, container, blob, client.url, props))

    return read


class Receipts:
    """Per-function blob receipts: blob name -> {etag, status (pending|done|poisoned), attempts}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, dict[str, Any]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def get(self, blob: str) -> dict[str, Any] | None:
        return self.data.get(blob)

    def put(self, blob: str, etag: str, status: str, attempts: int) -> None:
        self.data[blob] = {"etag": etag, "status": status, "attempts": attempts}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)


class BlobListener:
    """Scans one container for new or changed blobs matching one function's path pattern."""

    def __init__(
        self, fn: FunctionInfo, invoker: Invoker, storage: Storage, state_dir: Path, config: HostConfig
    ) -> None:
        self.fn = fn
        self.name = fn.name
        self.invoker = invoker
        self.storage = storage
        where = f"function {fn.name!r} path"
        self.container, self.pattern = split_path(
            resolve_expression_literal(str(fn.trigger.get("path", "")), where), where
        )
        self.regex = pattern_regex(self.pattern)
        self.prefix = self.pattern.split("{", 1)[0]
        self.client: ContainerClient = storage.blob_service(
            fn.trigger.get("connection")
        ).get_container_client(self.container)
        self.receipts = Receipts(state_dir / "blob_receipts" / f"{fn.name}.json")
        self.max_attempts = config.queues.max_dequeue_count
        self.retry_delay = config.queues.visibility_timeout.total_seconds()
        self.encoding = config.queues.message_encoding
        self.limit = asyncio.Semaphore(config.blob_parallelism)
        self.in_flight: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._created: set[str] = set()
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        log.info("Blob trigger '%s' watching %s/%s", self.name, self.container, self.pattern)
        if str(self.fn.trigger.get("source", "")).lower() == "eventgrid":
            log.info("Blob trigger '%s': source EventGrid is served by polling on this host", self.name)
        try:
            while not self._stopping.is_set():
                try:
                    await self.scan()
                except ResourceNotFoundError:
                    pass  # the container does not exist yet
                except Exception as exc:
                    log.warning("blob scan of %s failed: %s", self.container, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), SCAN_INTERVAL)
        finally:
            # in-flight blobs finish (the host drains on shutdown); a cancel from the host cancels them too
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def scan(self) -> None:
        async for props in self.client.list_blobs(name_starts_with=self.prefix or None):
            name = str(props.name)
            m = self.regex.fullmatch(name)
            if m is None or name in self.in_flight:
                continue
            etag = str(props.etag)
            receipt = self.receipts.get(name)
            if receipt is not None and receipt["etag"] == etag and receipt["status"] != "pending":
                continue
            attempts = int(receipt["attempts"]) if receipt and receipt["etag"] == etag else 0
            self.receipts.put(name, etag, "pending", attempts)
            self.in_flight.add(name)
            task = asyncio.create_task(self.process(name, etag, attempts, m.groupdict()))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def process(self, name: str, etag: str, attempts: int, captures: dict[str, str]) -> None:
        try:
            async with self.limit:
                while attempts < self.max_attempts and not self._stopping.is_set():
                    blob = self.client.get_blob_client(name)
                    try:
                        downloader = await blob.download_blob(
                            etag=etag, match_condition=MatchConditions.IfNotModified
                        )
                        data = await downloader.readall()
                    except (ResourceNotFoundError, ResourceModifiedError):
                        return  # deleted or replaced: the next scan sees the new version
                    props = {
                        "Length": len(data),
                        "ETag": etag,
                        "ContentType": downloader.properties.content_settings.content_type,
                        "LastModified": str(downloader.properties.last_modified),
                        "Metadata": dict(downloader.properties.metadata or {}),
                    }
                    stream = _stream(data, self.container, name, blob.url, props)
                    metadata = {
                        **captures,
                        "BlobTrigger": f"{self.container}/{name}",
                        "Uri": blob.url,
                        "Properties": props,
                        "Metadata": props["Metadata"],
                    }
                    result = await self.invoker.invoke(
                        self.fn,
                        lambda ann, d=data, s=stream: _convert(d, ann, self.fn.trigger, s),  # type: ignore[misc]
                        metadata,
                        f"New blob detected({self.container}/{name})",
                        retry_count=attempts,
                    )
                    attempts += 1
                    if result.ok:
                        self.receipts.put(name, etag, "done", attempts)
                        return
                    self.receipts.put(name, etag, "pending", attempts)
                    if attempts < self.max_attempts and self.retry_delay:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._stopping.wait(), self.retry_delay)
                if attempts >= self.max_attempts:
                    await self.poison(name, etag)
                    self.receipts.put(name, etag, "poisoned", attempts)
        finally:
            self.in_flight.discard(name)

    async def poison(self, name: str, etag: str) -> None:
        log.warning(
            "Blob '%s/%s' failed %d times; moving it to queue '%s'.",
            self.container,
            name,
            self.max_attempts,
            POISON_QUEUE,
        )
        message = {
            "Type": "BlobTrigger",
            "FunctionId": f"Host.Functions.{self.fn.name}",
            "BlobType": "BlockBlob",
            "ContainerName": self.container,
            "BlobName": name,
            "ETag": etag,
        }
        queue = self.storage.queue_service(self.fn.trigger.get("connection")).get_queue_client(POISON_QUEUE)
        await ensure_queue(queue, self._created)
        await queue.send_message(encode(json.dumps(message).encode(), self.encoding))

    def stop(self) -> None:
        self._stopping.set()


def resolve_expression_literal(path: str, where: str) -> str:
    """App settings (`%NAME%`) resolved, `{param}` expressions kept for matching."""
    protected = re.sub(r"\{([^{}]+)\}", lambda m: "\x00" + m.group(1) + "\x01", path)
    resolved = resolve_expression(protected, {}, where)
    return resolved.replace("\x00", "{").replace("\x01", "}")


def listeners(
    functions: list[FunctionInfo], invoker: Invoker, storage: Storage, state_dir: Path, config: HostConfig
) -> Iterator[BlobListener]:
    for fn in functions:
        if fn.trigger_type == "blobTrigger" and not disabled(fn):
            yield BlobListener(fn, invoker, storage, state_dir, config)
