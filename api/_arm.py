"""ARM plumbing shared by the HTTP adapters: api-version, error bodies, long-running-operation headers,
paging links, resource shapes and the store. Every handler is wrapped by `arm`: known errors become ARM
error bodies (`{"error": {"code", "message", "target", "details"}}`), storage outages a 503, anything else
a 500 with a correlation id and no stack trace (the trace goes to the log). Every answer carries ARM's
tracing headers: `x-ms-request-id` (new per request), `x-ms-correlation-request-id` (the caller's, else new)
and `x-ms-client-request-id` (echoed when sent).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import azure.functions as func
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from imagebuilder.pipeline.messages import RESOURCE_TYPE
from imagebuilder.settings import Settings
from imagebuilder.store import (
    ConflictError,
    InvalidContinuationError,
    NotFoundError,
    OperationRecord,
    RunRecord,
    Store,
    StoredTemplate,
    StoredTrigger,
    StoreError,
    TooLargeError,
    open_store,
)
from imagebuilder.template import SUPPORTED_API_VERSIONS, TemplateError, validate_resource_name

log = logging.getLogger("api")

PROVIDER = "Microsoft.VirtualMachineImages"
TEMPLATE_TYPE = RESOURCE_TYPE
TRIGGER_TYPE = f"{RESOURCE_TYPE}/triggers"
RUN_TYPE = f"{RESOURCE_TYPE}/runs"

SUBSCRIPTION = "subscriptions/{subscriptionId}"
TEMPLATES = SUBSCRIPTION + "/resourceGroups/{resourceGroupName}/providers/" + PROVIDER + "/imageTemplates"
TEMPLATE = TEMPLATES + "/{imageTemplateName}"

_RG = re.compile(r"^[-\w._()]{1,90}$")
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-(preview|beta|alpha|privatepreview))?$", re.IGNORECASE)
_SUB = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class ArmError(Exception):
    """An ARM error answer: HTTP status plus `{"error": {code, message, target, details}}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        target: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.target = target
        self.details = details or []

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target is not None:
            error["target"] = self.target
        error["details"] = self.details
        return {"error": error}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body), status_code=status, headers=headers or {}, mimetype="application/json"
    )


def empty_response(status: int, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(b"", status_code=status, headers=headers or {})


def _error_response(exc: BaseException) -> func.HttpResponse:
    if isinstance(exc, ArmError):
        return json_response(exc.body(), exc.status)
    if isinstance(exc, TemplateError):
        return json_response(exc.to_arm(), 400)
    if isinstance(exc, NotFoundError):
        return json_response(ArmError(404, "ResourceNotFound", exc.message).body(), 404)
    if isinstance(exc, TooLargeError):
        return json_response(ArmError(413, "RequestEntityTooLarge", str(exc)).body(), 413)
    if isinstance(exc, InvalidContinuationError):
        return json_response(ArmError(400, "InvalidContinuationToken", str(exc), "$skipToken").body(), 400)
    if isinstance(exc, ConflictError):
        return json_response(ArmError(409, "Conflict", str(exc)).body(), 409)
    correlation = str(uuid.uuid4())
    if isinstance(exc, ServiceRequestError | ServiceResponseError) or (
        isinstance(exc, HttpResponseError) and (exc.status_code or 0) >= 500
    ):
        log.warning("storage unavailable (correlation %s): %s", correlation, exc)
        return json_response(
            ArmError(
                503,
                "ServiceUnavailable",
                f"The service's storage is unavailable; retry shortly. Correlation id: {correlation}.",
            ).body(),
            503,
            {"Retry-After": "10"},
        )
    if isinstance(exc, StoreError):
        log.error("store error (correlation %s): %s", correlation, exc)
    else:
        log.exception("unhandled error (correlation %s)", correlation, exc_info=exc)
    return json_response(
        ArmError(
            500,
            "InternalServerError",
            f"The service could not complete the request; retry it. Correlation id: {correlation}.",
        ).body(),
        500,
    )


def _request_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> func.HttpRequest | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, func.HttpRequest):
            return value
    return None


def _trace(req: func.HttpRequest | None, resp: func.HttpResponse) -> func.HttpResponse:
    """ARM's tracing headers: a request id, the caller's correlation id (or a new one), the client's id."""
    incoming = req.headers if req is not None else {}
    resp.headers["x-ms-request-id"] = str(uuid.uuid4())
    resp.headers["x-ms-correlation-request-id"] = str(
        incoming.get("x-ms-correlation-request-id") or uuid.uuid4()
    )
    client_id = incoming.get("x-ms-client-request-id")
    if client_id:
        resp.headers["x-ms-client-request-id"] = str(client_id)
    return resp


def arm(fn: F) -> F:
    """Turn every exception of a handler into an ARM error response (sync or async handlers), and add
    ARM's tracing headers to every response."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> func.HttpResponse:
            try:
                result: func.HttpResponse = await fn(*args, **kwargs)
            except Exception as exc:
                result = _error_response(exc)
            return _trace(_request_of(args, kwargs), result)

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> func.HttpResponse:
        try:
            result: func.HttpResponse = fn(*args, **kwargs)
        except Exception as exc:
            result = _error_response(exc)
        return _trace(_request_of(args, kwargs), result)

    return wrapper  # type: ignore[return-value]


def method_not_allowed(req: func.HttpRequest, allowed: str) -> func.HttpResponse:
    """405 as ARM answers a method the resource does not support, with `Allow`."""
    body = ArmError(
        405,
        "MethodNotAllowed",
        f"The requested resource does not support http method '{req.method}'; it supports {allowed}.",
    ).body()
    return json_response(body, 405, {"Allow": allowed})


# -- request parts -------------------------------------------------------------------------------------


def api_version(req: func.HttpRequest) -> str:
    """The request's `api-version`, which ARM requires on every call and which must be one we serve."""
    value = str(req.params.get("api-version") or "")
    if not value:
        raise ArmError(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
            "api-version",
        )
    if value in SUPPORTED_API_VERSIONS:
        return value
    supported = ", ".join(SUPPORTED_API_VERSIONS)
    if not _API_VERSION.match(value):
        raise ArmError(
            400,
            "InvalidApiVersionParameter",
            f"The api-version '{value}' is invalid. The supported versions are '{supported}'.",
            "api-version",
        )
    # A well-formed version this provider does not serve: ARM's answer from the provider's manifest.
    raise ArmError(
        400,
        "NoRegisteredProviderFound",
        f"No registered resource provider found for API version '{value}' and type "
        f"'{_resource_type_of(req)}'. The supported api-versions are '{supported}'.",
        "api-version",
    )


def _resource_type_of(req: func.HttpRequest) -> str:
    """The resource type a request addresses, as ARM names it in NoRegisteredProviderFound."""
    parts = [p.lower() for p in urlsplit(req.url).path.strip("/").split("/")]
    try:
        tail = parts[parts.index(PROVIDER.lower()) + 1 :]
    except ValueError:
        return "imageTemplates"
    if tail[:1] == ["operations"]:
        return "operations"
    if tail[:1] == ["locations"]:
        return "locations/operations"
    if len(tail) >= 3 and tail[2] in ("triggers", "runoutputs"):
        return "imageTemplates/" + ("triggers" if tail[2] == "triggers" else "runOutputs")
    return "imageTemplates"


def route(req: func.HttpRequest, name: str) -> str:
    value = str(req.route_params.get(name) or "")
    if not value:
        raise ArmError(400, "InvalidParameter", f"The path parameter '{name}' is missing.", name)
    return value


def subscription(req: func.HttpRequest) -> str:
    sub = route(req, "subscriptionId")
    if not _SUB.match(sub):
        raise ArmError(
            400,
            "InvalidSubscriptionId",
            f"The subscription identifier '{sub}' is malformed.",
            "subscriptionId",
        )
    return sub


def resource_group(req: func.HttpRequest) -> str:
    rg = route(req, "resourceGroupName")
    if not _RG.match(rg) or rg.endswith("."):
        raise ArmError(
            400,
            "InvalidResourceGroupName",
            f"The resource group name '{rg}' is invalid: use 1-90 letters, digits, '_', '-', '.', "
            "'(' or ')', not ending in '.'.",
            "resourceGroupName",
        )
    return rg


def resource_name(req: func.HttpRequest, param: str) -> str:
    return validate_resource_name(route(req, param), param)


def template_coordinates(req: func.HttpRequest) -> tuple[str, str, str]:
    return subscription(req), resource_group(req), resource_name(req, "imageTemplateName")


MAX_REQUEST_BYTES = 4 * 1024 * 1024  # ARM's limit on a request body


def read_json(req: func.HttpRequest) -> Any:
    raw = req.get_body()
    if len(raw or b"") > MAX_REQUEST_BYTES:
        raise ArmError(
            413,
            "RequestEntityTooLarge",
            f"The request content is {len(raw)} bytes; the limit is {MAX_REQUEST_BYTES} bytes (4 MiB). "
            "Send a smaller template: move large inline scripts to scriptUri.",
        )
    media = str(req.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        # ARM's answer to a body it cannot read as JSON (no Content-Type at all is read as JSON).
        raise ArmError(
            415,
            "UnsupportedMediaType",
            f"The content media type '{media}' is not supported. Only 'application/json' is supported.",
        )
    if not raw or not raw.strip():
        raise ArmError(400, "InvalidRequestContent", "The request content was empty; send a JSON object.")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ArmError(
            400,
            "InvalidRequestContent",
            f"The request content is not valid JSON: {reason}. Send a JSON object.",
        ) from None
    if _depth_exceeds(body, MAX_JSON_DEPTH):
        raise ArmError(
            400,
            "InvalidRequestContent",
            f"The request content is nested more than {MAX_JSON_DEPTH} levels deep; a template needs far "
            "fewer. Send the template's JSON object without the extra nesting.",
        )
    return body


MAX_JSON_DEPTH = 64  # a template nests about 8 levels; deeper input only exhausts the stack later


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests deeper than `limit` (iterative: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


# -- ids, links and headers ----------------------------------------------------------------------------


def template_id(sub: str, rg: str, name: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{TEMPLATE_TYPE}/{name}"


def parse_template_id(resource_id: str) -> tuple[str, str, str]:
    parts = resource_id.strip("/").split("/")
    if len(parts) < 8 or parts[0].lower() != "subscriptions" or parts[2].lower() != "resourcegroups":
        raise ValueError(f"not an image template id: {resource_id!r}")
    return parts[1], parts[3], parts[7]


def origin(req: func.HttpRequest) -> str:
    """scheme://host the client used (behind App Service's front end, from X-Forwarded-Proto/-Host)."""
    url = urlsplit(req.url)
    scheme = (req.headers.get("x-forwarded-proto") or url.scheme or "").split(",")[0].strip()
    host = (req.headers.get("x-forwarded-host") or url.netloc or "").split(",")[0].strip()
    return f"{scheme}://{host}" if scheme and host else ""


def location_slug(location: str) -> str:
    """The location segment of operation URLs: Azure's normalized region name ("West US" -> "westus")."""
    return re.sub(r"[^a-z0-9]", "", location.lower()) or "global"


def operation_path(op: OperationRecord) -> str:
    return (
        f"/subscriptions/{op.subscription_id}/providers/{PROVIDER}/locations/{op.location}"
        f"/operations/{op.operation_id}"
    )


def operation_result_path(op: OperationRecord) -> str:
    return (
        f"/subscriptions/{op.subscription_id}/providers/{PROVIDER}/locations/{op.location}"
        f"/operationResults/{op.operation_id}"
    )


def retry_after(op: OperationRecord | None = None) -> int:
    """Seconds a client should wait before polling: short at first, longer as a build goes on."""
    if op is None or op.done:
        return 1
    elapsed = (datetime.now(UTC) - op.start_time).total_seconds()
    return int(max(1, min(15, elapsed // 10)))


def lro_headers(
    req: func.HttpRequest, op: OperationRecord, *, location: bool, version: str
) -> dict[str, str]:
    """`Azure-AsyncOperation` (+ `Location` for 202s) and `Retry-After`, as ARM sends them."""
    base = origin(req)
    headers = {
        "Azure-AsyncOperation": f"{base}{operation_path(op)}?api-version={version}",
        "Retry-After": str(retry_after(op)),
    }
    if location:
        headers["Location"] = f"{base}{operation_result_path(op)}?api-version={version}"
    return headers


def next_link(req: func.HttpRequest, token: str | None, version: str) -> str | None:
    if token is None:
        return None
    path = urlsplit(req.url).path
    return f"{origin(req)}{path}?api-version={version}&$skipToken={quote(token, safe='')}"


def page_size() -> int:
    """Templates per list page: the app setting IMAGEBUILDER_LIST_PAGE_SIZE (default 100), read per call."""
    return Settings.from_env().list_page_size


def store() -> Store:
    """The app's store, on the storage account of `AzureWebJobsStorage`."""
    return open_store(Settings.from_env().storage_connection)


# -- resource shapes -----------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def system_data(created: datetime, modified: datetime) -> dict[str, Any]:
    return {"createdAt": _iso(created), "lastModifiedAt": _iso(modified)}


def template_body(stored: StoredTemplate, last_run: RunRecord | None) -> dict[str, Any]:
    """The template as GET returns it: the stored resource, its lastRunStatus and systemData."""
    body: dict[str, Any] = json.loads(json.dumps(stored.resource))
    props = body.setdefault("properties", {})
    if last_run is not None:
        props["lastRunStatus"] = last_run.last_run_status()
    body["systemData"] = system_data(stored.created_at, stored.last_modified_at)
    return body


def trigger_body(trigger: StoredTrigger) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(json.dumps(trigger.resource))
    body["systemData"] = system_data(trigger.created_at, trigger.last_modified_at)
    return body


def run_body(run: RunRecord, outputs: list[dict[str, Any]], req: func.HttpRequest) -> dict[str, Any]:
    """Our extension: one run of a template, with its outputs and where its logs are."""
    rid = f"{run.run.template_id}/runs/{run.run.run_id}"
    props: dict[str, Any] = {
        "runState": run.run_state,
        "runSubState": run.run_sub_state,
        "message": run.message,
        "createdTime": _iso(run.created_time),
        "startTime": _iso(run.start_time),
        "endTime": _iso(run.end_time),
        "logUri": run.log_uri,
        "logs": {"customization.log": f"{origin(req)}{rid}/logs/customization.log"},
        "outputs": outputs,
        "details": run.details,
    }
    if isinstance(run.details.get("sbom"), dict):
        base = f"{origin(req)}{rid}"
        props["sbom"] = {o["name"]: f"{base}/sbom/{o['name']}" for o in outputs if o.get("name")}
        props["provenance"] = f"{base}/provenance"
    if run.error is not None:
        props["error"] = run.error
    return {"id": rid, "name": run.run.run_id, "type": RUN_TYPE, "properties": props}


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking store work off the worker's event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)
