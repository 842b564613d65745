"""The storage plumbing shared by the repositories: keys, JSON packing, paging tokens, clients.

This module (with the repositories next to it) is the only place that creates Azure Storage clients.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, TableEntity, TableServiceClient, UpdateMode
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.blob import BlobServiceClient

from imagebuilder.store.errors import (
    AlreadyExistsError,
    ConcurrencyError,
    InvalidContinuationError,
    InvalidKeyError,
    NotFoundError,
    TooLargeError,
)

T = TypeVar("T")

# A binary property holds at most 64 KiB and an entity at most 1 MiB (all properties together).
CHUNK_BYTES = 60_000
# Budgets per packed value so that every entity stays under 1 MiB: a run holds its template snapshot,
# details and error together.
MAX_PACKED_BYTES = 560_000
DETAILS_BYTES = 300_000
SMALL_BYTES = 60_000
MAX_CONFLICT_RETRIES = 50

_DEV_ACCOUNT = "devstoreaccount1"
_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_LOG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def expand_connection_string(value: str) -> str:
    """`UseDevelopmentStorage=true` becomes the explicit Azurite connection string on 10000-10002."""
    if value.replace(" ", "").rstrip(";").lower() != "usedevelopmentstorage=true":
        return value
    return (
        "DefaultEndpointsProtocol=http;"
        f"AccountName={_DEV_ACCOUNT};AccountKey={_DEV_KEY};"
        f"BlobEndpoint=http://127.0.0.1:10000/{_DEV_ACCOUNT};"
        f"QueueEndpoint=http://127.0.0.1:10001/{_DEV_ACCOUNT};"
        f"TableEndpoint=http://127.0.0.1:10002/{_DEV_ACCOUNT};"
    )


@dataclass(frozen=True)
class IdentityEndpoints:
    """A storage account reached with an Entra ID identity instead of a key."""

    account_name: str
    table_url: str
    blob_url: str
    managed_identity: bool
    client_id: str | None

    def credential(self) -> TokenCredential:
        if self.managed_identity:
            return ManagedIdentityCredential(client_id=self.client_id)
        return DefaultAzureCredential(managed_identity_client_id=self.client_id)


def identity_endpoints(conn: str) -> IdentityEndpoints | None:
    """The endpoints of an identity-based connection string; None for a key- or SAS-based one."""
    parts: dict[str, str] = {}
    for item in conn.split(";"):
        name, sep, value = item.partition("=")
        if sep:
            parts[name.strip().lower()] = value.strip()
    if "accountkey" in parts or "sharedaccesssignature" in parts or "accountname" not in parts:
        return None
    account = parts["accountname"]
    suffix = parts.get("endpointsuffix", "core.windows.net")
    credential = parts.get("credential", "").lower()
    return IdentityEndpoints(
        account_name=account,
        table_url=parts.get("tableendpoint") or f"https://{account}.table.{suffix}",
        blob_url=parts.get("blobendpoint") or f"https://{account}.blob.{suffix}",
        managed_identity=credential == "managedidentity",
        client_id=parts.get("clientid") or None,
    )


def table_service(connection_string: str) -> TableServiceClient:
    """The table service of a connection string (key, SAS, or Entra ID identity; UseDevelopmentStorage
    expanded)."""
    conn = expand_connection_string(connection_string)
    identity = identity_endpoints(conn)
    if identity is None:
        return TableServiceClient.from_connection_string(conn)
    return TableServiceClient(identity.table_url, credential=identity.credential())


def blob_service(connection_string: str) -> BlobServiceClient:
    """The blob service of a connection string, as `table_service`."""
    conn = expand_connection_string(connection_string)
    identity = identity_endpoints(conn)
    if identity is None:
        return BlobServiceClient.from_connection_string(conn)
    return BlobServiceClient(identity.blob_url, credential=identity.credential())


def now() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def key(part: str) -> str:
    """One part of a table key: ARM names are case-insensitive, and `/ \\ # ? |` are not key characters.

    Percent-encoding keeps keys unique and lets `|` separate parts.
    """
    return quote(part.lower(), safe="")


def join_keys(*parts: str) -> str:
    return "|".join(key(p) for p in parts)


def prefix_range(prefix: str) -> tuple[str, str]:
    """(low, high) bounds selecting every key that starts with `prefix + '|'`."""
    return prefix + "|", prefix + "}"  # '}' sorts right after '|'


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise InvalidKeyError(
            f"run id {run_id!r} cannot be a storage key",
            hint="use 1-80 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return run_id


def check_log_name(name: str) -> str:
    if not _LOG_NAME.match(name):
        raise InvalidKeyError(
            f"log name {name!r} is not allowed",
            hint="use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def pack(prefix: str, value: Any, limit: int = MAX_PACKED_BYTES) -> dict[str, Any]:
    """JSON-serialize and compress `value` into binary properties `{prefix}0..n` plus `{prefix}Chunks`.

    One entity is written atomically, so a value packed this way is never seen half-written.
    """
    raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    data = zlib.compress(raw, 6)
    if len(data) > limit:
        raise TooLargeError(
            f"{prefix} is {len(raw)} bytes of JSON ({len(data)} compressed); at most {limit} "
            "compressed bytes fit one storage entity",
            hint="move large inline scripts to scriptUri/sourceUri files",
        )
    chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    props: dict[str, Any] = {f"{prefix}Chunks": len(chunks)}
    for i, chunk in enumerate(chunks):
        props[f"{prefix}{i}"] = chunk
    return props


def repack(
    entity: Mapping[str, Any], prefix: str, value: Any, limit: int = MAX_PACKED_BYTES
) -> dict[str, Any]:
    """A copy of `entity` with `prefix` packed anew (chunks of the old value dropped)."""
    stale = re.compile(re.escape(prefix) + r"\d+$")
    out = {k: v for k, v in entity.items() if not stale.match(k)}
    out.update(pack(prefix, value, limit))
    return out


def unpack(entity: Mapping[str, Any], prefix: str, default: Any = None) -> Any:
    count = entity.get(f"{prefix}Chunks")
    if not isinstance(count, int) or count <= 0:
        return default
    data = b"".join(bytes(entity[f"{prefix}{i}"]) for i in range(count))
    return json.loads(zlib.decompress(data))


def etag_of(entity: TableEntity) -> str:
    return str(entity.metadata["etag"])


def encode_token(token: Any) -> str | None:
    if not token:
        return None
    return base64.urlsafe_b64encode(json.dumps(token, separators=(",", ":")).encode()).decode()


def decode_token(token: str | None) -> dict[str, str] | None:
    if not token:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error) as exc:
        raise InvalidContinuationError(
            "the continuation token is not one this service issued", hint="start the listing again"
        ) from exc
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidContinuationError(
            "the continuation token is not one this service issued", hint="start the listing again"
        )
    return value


class Table:
    """One table with the few operations the repositories need, mapping SDK errors to store errors."""

    def __init__(self, client: TableClient) -> None:
        self.client = client

    def get(self, pk: str, rk: str) -> TableEntity | None:
        try:
            return self.client.get_entity(pk, rk)
        except ResourceNotFoundError:
            return None

    def create(self, entity: dict[str, Any], what: str) -> str:
        try:
            resp = self.client.create_entity(entity)
        except ResourceExistsError as exc:
            raise AlreadyExistsError(f"{what} already exists", hint="read it and replace it") from exc
        return str(resp["etag"])

    def replace(self, entity: dict[str, Any], etag: str, what: str) -> str:
        try:
            resp = self.client.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        except ResourceNotFoundError as exc:
            raise NotFoundError(f"{what} does not exist") from exc
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise ConcurrencyError(
                    f"{what} changed since it was read", hint="read it again and retry"
                ) from exc
            if exc.status_code == 404:
                raise NotFoundError(f"{what} does not exist") from exc
            raise
        return str(resp["etag"])

    def upsert(self, entity: dict[str, Any]) -> str:
        resp = self.client.upsert_entity(entity, mode=UpdateMode.REPLACE)
        return str(resp["etag"])

    def delete(self, pk: str, rk: str, etag: str | None = None, what: str = "entity") -> None:
        try:
            if etag is None:
                self.client.delete_entity(pk, rk)
            else:
                self.client.delete_entity(pk, rk, etag=etag, match_condition=MatchConditions.IfNotModified)
        except ResourceNotFoundError:
            return
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise ConcurrencyError(
                    f"{what} changed since it was read", hint="read it again and retry"
                ) from exc
            if exc.status_code == 404:
                return
            raise

    def query(
        self, flt: str, params: dict[str, Any], select: list[str] | None = None
    ) -> Iterator[TableEntity]:
        return iter(self.client.query_entities(flt, parameters=params, select=select))

    def page(
        self, flt: str, params: dict[str, Any], page_size: int, continuation: str | None
    ) -> tuple[list[TableEntity], str | None]:
        """One page of at most `page_size` entities (never empty while more exist) and the next token."""
        token: Any = decode_token(continuation)
        items: list[TableEntity] = []
        while True:
            pager = self.client.query_entities(
                flt, parameters=params, results_per_page=page_size - len(items)
            ).by_page(continuation_token=token)
            try:
                items.extend(next(pager))
            except StopIteration:
                return items, None
            except HttpResponseError as exc:
                if continuation and exc.status_code in (400, 404):
                    raise InvalidContinuationError(
                        "the continuation token is not one this service issued",
                        hint="start the listing again",
                    ) from exc
                raise
            token = pager.continuation_token  # type: ignore[attr-defined]
            if not token or len(items) >= page_size:
                return items, encode_token(token)


def retry_on_conflict(what: str, attempt: Callable[[], T]) -> T:
    """Run a read-modify-write `attempt` until it is not beaten by another writer."""
    last: ConcurrencyError | None = None
    for _ in range(MAX_CONFLICT_RETRIES):
        try:
            return attempt()
        except ConcurrencyError as exc:
            last = exc
    raise ConcurrencyError(
        f"{what}: gave up after {MAX_CONFLICT_RETRIES} conflicting writes", hint="retry later"
    ) from last
