"""Run Command output kept whole: each run command streams stdout and stderr into append blobs.

Run Command's instance view holds only a sliding 4 KB tail of a script's output (run-command-handler-linux
`maxTailLen = 4096`), so a provider that read the instance view lost everything past it between polls.
Given `outputBlobUri` / `errorBlobUri`, the handler appends the whole streams to blobs instead; this module
creates those append blobs in the app's own storage account (container `imagebuilder-runcommand`), hands
the VM a user-delegation SAS for each one (add/create/write on that blob only, expiring with the command's
deadline; the SAS is a secret: it goes into the run command's body only, never into a log or a Pending)
and reads what was appended since the last poll.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from imagebuilder.providers.azure.clients import AzureClients

CONTAINER = "imagebuilder-runcommand"
TAIL_BYTES = 8192  # what a finished command returns for markers and error tails


@dataclass(frozen=True)
class Streams:
    """The two blobs of one run command (names inside CONTAINER)."""

    output: str
    error: str


class RunLogStore:
    """Append blobs for run-command output in one storage account, reached with the app's identity."""

    def __init__(self, arm: AzureClients, account: str) -> None:
        self.arm = arm
        self.account = account
        self.base = f"https://{account}.blob.core.windows.net"

    def streams(self, prefix: str, name: str) -> Streams:
        return Streams(f"{prefix}/{name}.out", f"{prefix}/{name}.err")

    def _client(self, blob: str) -> Any:
        return self.arm.blob(f"{self.base}/{CONTAINER}/{blob}")

    def create(self, streams: Streams, valid_seconds: int, now: dt.datetime | None = None) -> dict[str, str]:
        """Create both append blobs (empty) and return the run command properties that point at them."""
        from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

        for blob in (streams.output, streams.error):
            client = self._client(blob)
            try:
                self.arm.call(f"create run log {blob}", client.create_append_blob)
            except Exception as exc:
                if not isinstance(exc.__cause__, ResourceNotFoundError):
                    raise
                self._create_container()
                self.arm.call(f"create run log {blob}", client.create_append_blob)
        start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
        expiry = start + dt.timedelta(seconds=valid_seconds + 600)
        service: BlobServiceClient = self.arm.blob_service(self.base)
        key = self.arm.call(
            "get a user delegation key", lambda: service.get_user_delegation_key(start, expiry)
        )
        permission = BlobSasPermissions(read=True, add=True, create=True, write=True)
        uris = {}
        for field, blob in (("outputBlobUri", streams.output), ("errorBlobUri", streams.error)):
            sas = generate_blob_sas(
                self.account,
                CONTAINER,
                blob,
                user_delegation_key=key,
                permission=permission,
                expiry=expiry,
                start=start,
            )
            uris[field] = f"{self.base}/{CONTAINER}/{blob}?{sas}"
        return uris

    def _create_container(self) -> None:
        service = self.arm.blob_service(self.base)
        try:
            self.arm.call(f"create container {CONTAINER}", lambda: service.create_container(CONTAINER))
        except Exception as exc:
            if not isinstance(exc.__cause__, ResourceExistsError):
                raise

    def read(self, blob: str, offset: int) -> tuple[str, int]:
        """What was appended to `blob` past `offset` (bytes), and the new offset. A partial UTF-8
        character at the end waits for the next read."""
        client = self._client(blob)
        props = self.arm.call(f"read run log {blob}", client.get_blob_properties)
        size = int(props.size or 0)
        if size <= offset:
            return "", offset
        data: bytes = self.arm.call(
            f"read run log {blob}",
            lambda: client.download_blob(offset=offset, length=size - offset).readall(),
        )
        cut = len(data)
        while cut > 0 and cut > len(data) - 4:
            try:
                data[:cut].decode("utf-8")
                break
            except UnicodeDecodeError:
                cut -= 1
        text = data[:cut].decode("utf-8", errors="replace")
        return text, offset + cut

    def tail(self, blob: str) -> str:
        """The last TAIL_BYTES of a blob (for markers and the failure's last lines)."""
        client = self._client(blob)
        props = self.arm.call(f"read run log {blob}", client.get_blob_properties)
        size = int(props.size or 0)
        if size == 0:
            return ""
        start = max(0, size - TAIL_BYTES)
        data: bytes = self.arm.call(
            f"read run log {blob}", lambda: client.download_blob(offset=start, length=size - start).readall()
        )
        return data.decode("utf-8", errors="replace")
