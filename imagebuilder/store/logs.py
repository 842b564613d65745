"""Run logs as append blobs: one blob per log, rolled over to numbered segments near the block limit.

`BlobLog` satisfies `imagebuilder.providers.base.LogSink`: every `write` is appended at once (nothing
is buffered, so a crash loses nothing written), `uri` is the blob's plain URL (no SAS, no key).
Every write goes through `scrub_secrets`: SAS signatures (`sig=`), function keys in query strings
(`code=`) and storage account keys (`AccountKey=`) never reach a log, whatever printed them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContainerClient, ContentSettings

# An append blob takes at most 50,000 blocks; roll over before that. A block is at most 4 MiB.
MAX_BLOCKS_PER_SEGMENT = 49_000
MAX_BLOCK_BYTES = 4 * 1024 * 1024
_TEXT = ContentSettings(content_type="text/plain; charset=utf-8")
_SECRETS = (
    re.compile(r"([?&](?:sig|signature|code)=)[^&\s#\"'<>]+", re.IGNORECASE),
    re.compile(r"((?:AccountKey|SharedAccessKey)=)[^;\s\"'<>]+", re.IGNORECASE),
)
REDACTED = "<redacted>"


def scrub_secrets(text: str) -> str:
    """`text` with the values of SAS signatures, `code=` keys and account keys replaced by <redacted>."""
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


class BlobLog:
    """One run log (e.g. `customization.log`) in the run-log container."""

    def __init__(self, container: ContainerClient, blob_name: str) -> None:
        self._container = container
        self._name = blob_name
        self._segment: int | None = None
        self._uri: str | None = None
        self._pattern = re.compile(re.escape(blob_name) + r"(?:\.seg(\d{5}))?$")

    @property
    def uri(self) -> str:
        """The blob's URL (without credentials); segments after the first sit next to it."""
        if self._uri is None:  # a blob client is not cheap to make: every run record names its log
            self._uri = str(self._container.get_blob_client(self._name).url)
        return self._uri

    @property
    def blob_name(self) -> str:
        return self._name

    def _segment_name(self, index: int) -> str:
        return self._name if index == 0 else f"{self._name}.seg{index:05d}"

    def _segments(self) -> list[tuple[int, str]]:
        found: list[tuple[int, str]] = []
        for blob in self._container.list_blobs(name_starts_with=self._name):
            m = self._pattern.match(blob.name)
            if m:
                found.append((int(m.group(1) or 0), blob.name))
        return sorted(found)

    def _ensure(self, index: int) -> bool:
        """Create segment `index` unless it exists; True when this call created it."""
        try:
            self._container.get_blob_client(self._segment_name(index)).create_append_blob(
                content_settings=_TEXT, match_condition=MatchConditions.IfMissing
            )
        except (ResourceExistsError, HttpResponseError) as exc:
            if isinstance(exc, ResourceExistsError) or exc.status_code in (409, 412):
                return False
            raise
        return True

    def open(self) -> None:
        """Find the segment appends go to (the first write does it otherwise): a new log is created (one
        request), an existing one has its segments listed (a later segment exists only once the first
        is full)."""
        self._current()

    def _current(self) -> int:
        if self._segment is None:
            if self._ensure(0):
                self._segment = 0
            else:
                segments = self._segments()
                self._segment = segments[-1][0] if segments else 0
                if not segments:  # deleted meanwhile
                    self._ensure(0)
        return self._segment

    def write(self, text: str) -> None:
        """Append `text` (one or more whole lines) to the log, secrets scrubbed (see `scrub_secrets`)."""
        data = scrub_secrets(text).encode("utf-8", errors="replace")
        for start in range(0, len(data), MAX_BLOCK_BYTES):
            self._append(data[start : start + MAX_BLOCK_BYTES])

    def _append(self, block: bytes) -> None:
        index = self._current()
        blob = self._container.get_blob_client(self._segment_name(index))
        try:
            resp = blob.append_block(block)
        except ResourceNotFoundError:
            self._ensure(index)
            resp = blob.append_block(block)
        except HttpResponseError as exc:
            if getattr(exc, "error_code", None) != "BlockCountExceedsLimit":
                raise
            self._roll(index)
            self._append(block)
            return
        count = resp.get("blob_committed_block_count")
        if isinstance(count, int) and count >= MAX_BLOCKS_PER_SEGMENT:
            self._roll(index)

    def _roll(self, index: int) -> None:
        self._segment = index + 1
        self._ensure(self._segment)

    def read(self) -> str:
        """The whole log so far ("" when nothing was written)."""
        out = bytearray()
        for _, name in self._segments():
            try:
                out += self._container.get_blob_client(name).download_blob().readall()
            except ResourceNotFoundError:
                continue
        return out.decode("utf-8", errors="replace")

    def delete(self) -> None:
        for _, name in self._segments():
            try:
                self._container.delete_blob(name)
            except ResourceNotFoundError:
                continue


if TYPE_CHECKING:
    from imagebuilder.providers.base import LogSink

    def _satisfies_log_sink(log: BlobLog) -> LogSink:
        return log  # mypy: BlobLog is a LogSink
