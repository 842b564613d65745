"""Every Azure SDK client of the Azure provider, built here and nowhere else, with their shared ARM plumbing.

Owns: credentials, the SDK pipelines (one transport, retries, write pacing), starting a long-running
operation without waiting for it (`StartOnly`), reading an operation's status, and sorting ARM errors into
transient (raised) and permanent (`ArmFailure`, turned into `ErrorInfo` by the provider).

Exceptions::

    ProviderError (base.py)
    ├── TransientProviderError      a 5xx, a lost connection, a busy resource: the activity is retried
    │   └── Throttled               ARM said 429 / Retry-After: resume after `retry_after` seconds
    ├── ProviderConfigError         no credentials, a subscription we cannot reach
    └── ArmFailure                  ARM refused for good: `code` and `message` are ARM's own
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from azure.core import PipelineClient
from azure.core.credentials import TokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import RedirectPolicy, RetryPolicy, SansIOHTTPPolicy
from azure.core.pipeline.transport import HttpTransport
from azure.core.polling import PollingMethod
from azure.core.rest import HttpRequest

from imagebuilder.providers.base import ProviderConfigError, ProviderError, TransientProviderError

ARM_ENDPOINT = "https://management.azure.com"
WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})
# ARM error codes that mean "try again later" even when the HTTP status looks permanent.
TRANSIENT_CODES = frozenset(
    {
        "AllocationFailed",
        "AnotherOperationInProgress",
        "Conflict",
        "InternalExecutionError",
        "InternalOperationError",
        "InternalServerError",
        "OperationPreempted",
        "RetryableError",
        "ServerTimeout",
        "ServiceUnavailable",
        "TooManyRequests",
        "ZonalAllocationFailed",
        "OverconstrainedAllocationRequest",
        "PrimaryResourceNotReady",
        "ResourceGroupBeingDeleted",
        "InUseSubnetCannotBeDeleted",
        "NicInUse",
        "InUseNetworkSecurityGroupCannotBeDeleted",
    }
)

T = TypeVar("T")


class Throttled(TransientProviderError):
    """ARM answered 429 (or asked us to come back later): resume after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, hint=f"retry after {retry_after}s")
        self.retry_after = retry_after


class ArmFailure(ProviderError):
    """A permanent ARM refusal: `code` and `message` are the ones ARM returned."""

    def __init__(self, code: str, message: str, *, status: int | None = None, target: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.arm_message = message
        self.status = status
        self.target = target


def retry_after_seconds(headers: Any, default: int) -> int:
    """Seconds to wait from Retry-After or ARM's x-ms-retry-after-ms, else `default`."""
    for name, scale in (("Retry-After", 1.0), ("x-ms-retry-after-ms", 0.001)):
        value = headers.get(name) if headers is not None else None
        if value:
            try:
                return max(1, int(float(value) * scale + 0.999))
            except ValueError:
                continue
    return default


def _arm_error(response: Any) -> tuple[str, str, str | None]:
    """ARM's {"error": {"code", "message", "target"}} from a response, whatever its shape."""
    try:
        body = json.loads(response.text() or "{}")
    except (ValueError, AttributeError):
        body = {}
    error = body.get("error", body) if isinstance(body, dict) else {}
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code") or getattr(response, "reason", None) or "HttpError")
    message = str(error.get("message") or f"HTTP {getattr(response, 'status_code', '?')}")
    target = error.get("target")
    return code, message, str(target) if target else None


def classify(exc: Exception, *, what: str, default_retry: int = 15) -> ProviderError:
    """Turn an SDK exception into the provider's tree: Throttled / Transient / Config / ArmFailure."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ClientAuthenticationError):
        return ProviderConfigError(
            f"{what}: authentication failed: {exc.message}",
            hint="give the Function App a managed identity (or set AZURE_CLIENT_ID) with access",
        )
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return TransientProviderError(f"{what}: connection failed: {exc}")
    if isinstance(exc, HttpResponseError):
        response: Any = exc.response
        status = exc.status_code or 0
        if response is None:
            return TransientProviderError(f"{what}: {exc.message}")
        code, message, target = _arm_error(response)
        if status == 429:
            return Throttled(
                f"{what}: throttled by ARM ({code})",
                retry_after=retry_after_seconds(response.headers, default_retry),
            )
        if status >= 500 or status == 408 or code in TRANSIENT_CODES:
            return TransientProviderError(f"{what}: {code}: {message}")
        if status in (401, 403):
            message += " (grant the identity running the app the roles listed in infra/README.md)"
        return ArmFailure(code, message, status=status, target=target)
    return TransientProviderError(f"{what}: {type(exc).__name__}: {exc}")


@dataclass
class Started:
    """What the first response of a long-running operation said: enough to poll it later."""

    status_code: int
    body: dict[str, Any]
    async_url: str | None
    location_url: str | None
    retry_after: int

    def operation(self, what: str) -> dict[str, Any] | None:
        """The JSON a `Pending` carries to resume, or None when the operation already finished."""
        if self.async_url is None and self.location_url is None:
            return None
        return {
            "what": what,
            "async_url": self.async_url,
            "location_url": self.location_url,
        }


class StartOnly(PollingMethod[Any]):
    """A polling method that polls nothing: it keeps the initial response so the caller can resume later.

    Passed as `polling=` to an SDK `begin_*` call, it makes the call return as soon as ARM accepted the
    operation (no background thread, no sleeping), and `started` says where to poll.
    """

    def __init__(self, default_retry: int) -> None:
        self._default_retry = default_retry
        self.started: Started | None = None

    def initialize(self, client: Any, initial_response: Any, deserialization_callback: Any) -> None:
        http = initial_response.http_response
        try:
            body = json.loads(http.text() or "{}")
        except ValueError:
            body = {}
        status = http.status_code
        headers = http.headers
        async_url = headers.get("Azure-AsyncOperation")
        location = headers.get("Location")
        self.started = Started(
            status_code=status,
            body=body if isinstance(body, dict) else {},
            async_url=async_url,
            location_url=location,
            retry_after=retry_after_seconds(headers, self._default_retry),
        )

    def run(self) -> None:
        return None

    def status(self) -> str:
        return "Started"

    def finished(self) -> bool:
        return True

    def resource(self) -> Any:
        return self.started

    def get_continuation_token(self) -> str:
        raise NotImplementedError("resume through Pending.operation, not a continuation token")


@dataclass
class OperationStatus:
    """The state of a long-running operation, read from its Azure-AsyncOperation or Location URL."""

    state: str  # InProgress | Succeeded | Failed | Canceled
    retry_after: int
    body: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None

    @property
    def done(self) -> bool:
        return self.state != "InProgress"


class WritePacer(SansIOHTTPPolicy[Any, Any]):
    """Paces ARM writes: at least `min_interval` seconds apart per subscription, slower when ARM's
    `x-ms-ratelimit-remaining-subscription-writes` runs low. Sleep and clock are injectable."""

    LOW_WATERMARK = 20

    def __init__(self, min_interval: float, clock: Callable[[], float], sleep: Callable[[float], None]):
        self.min_interval = min_interval
        self._clock = clock
        self._sleep = sleep
        self._last: float | None = None
        self._remaining: int | None = None
        self._lock = threading.Lock()
        self.waited: list[float] = []

    def on_request(self, request: PipelineRequest[Any]) -> None:
        if request.http_request.method.upper() not in WRITE_METHODS:
            return
        with self._lock:
            interval = self.min_interval
            if self._remaining is not None and self._remaining < self.LOW_WATERMARK:
                interval = max(interval * 4, 2.0)
            now = self._clock()
            if self._last is not None:
                wait = self._last + interval - now
                if wait > 0:
                    self.waited.append(wait)
                    self._sleep(wait)
                    now += wait
            self._last = now

    def on_response(self, request: PipelineRequest[Any], response: PipelineResponse[Any, Any]) -> None:
        left = response.http_response.headers.get("x-ms-ratelimit-remaining-subscription-writes")
        if left is not None:
            try:
                self._remaining = int(left)
            except ValueError:
                pass


def make_credential(
    *, client_id: str | None = None, identity_resource_id: str | None = None
) -> TokenCredential:
    """The app's credential: a user-assigned managed identity when named, else DefaultAzureCredential."""
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if identity_resource_id:
        return ManagedIdentityCredential(identity_config={"resource_id": identity_resource_id})
    if client_id:
        return ManagedIdentityCredential(client_id=client_id)
    return DefaultAzureCredential()


class AzureClients:
    """The SDK clients for one subscription, sharing one transport, retry settings and write pacer."""

    def __init__(
        self,
        subscription_id: str,
        credential: TokenCredential,
        *,
        transport: HttpTransport | None = None,
        base_url: str = ARM_ENDPOINT,
        pacer: WritePacer | None = None,
        default_retry: int = 15,
    ) -> None:
        self.subscription_id = subscription_id
        self.credential = credential
        self.transport = transport
        self.base_url = base_url
        self.default_retry = default_retry
        self.pacer = pacer or WritePacer(1.0, time.monotonic, time.sleep)
        self._compute: Any = None
        self._network: Any = None
        self._resources: Any = None
        self._http: PipelineClient[Any, Any] | None = None

    def _kwargs(self) -> dict[str, Any]:
        # Status retries are ours (Pending + Retry-After across durable timers); the SDK only retries
        # lost connections, sleeping through the transport (tests inject a transport that never sleeps).
        kwargs: dict[str, Any] = {
            "retry_total": 3,
            "retry_status": 0,
            "retry_backoff_factor": 0.8,
            "per_call_policies": [self.pacer],
            "polling_interval": 0,
        }
        if self.transport is not None:
            kwargs["transport"] = self.transport
        return kwargs

    @property
    def compute(self) -> Any:
        if self._compute is None:
            from azure.mgmt.compute import ComputeManagementClient

            self._compute = ComputeManagementClient(
                self.credential, self.subscription_id, base_url=self.base_url, **self._kwargs()
            )
        return self._compute

    @property
    def network(self) -> Any:
        if self._network is None:
            from azure.mgmt.network import NetworkManagementClient

            self._network = NetworkManagementClient(
                self.credential, self.subscription_id, base_url=self.base_url, **self._kwargs()
            )
        return self._network

    @property
    def resources(self) -> Any:
        if self._resources is None:
            from azure.mgmt.resource.resources import ResourceManagementClient

            self._resources = ResourceManagementClient(
                self.credential, self.subscription_id, base_url=self.base_url, **self._kwargs()
            )
        return self._resources

    def blob(self, url: str) -> Any:
        """A BlobClient for a VHD target, authenticated with the app's identity."""
        from azure.storage.blob import BlobClient

        kwargs: dict[str, Any] = {"retry_total": 3}
        if self.transport is not None:
            kwargs["transport"] = self.transport
        return BlobClient.from_blob_url(url, credential=self.credential, **kwargs)

    def sas_blob(self, sas_url: str) -> Any:
        """A BlobClient authorized by the SAS in its URL alone (a managed disk's export): no token sent."""
        from azure.storage.blob import BlobClient

        kwargs: dict[str, Any] = {"retry_total": 3}
        if self.transport is not None:
            kwargs["transport"] = self.transport
        return BlobClient.from_blob_url(sas_url, **kwargs)

    def blob_service(self, account_url: str) -> Any:
        """A BlobServiceClient (containers, user delegation keys) with the app's identity."""
        from azure.storage.blob import BlobServiceClient

        kwargs: dict[str, Any] = {"retry_total": 3}
        if self.transport is not None:
            kwargs["transport"] = self.transport
        return BlobServiceClient(account_url, credential=self.credential, **kwargs)

    # -- calls -------------------------------------------------------------------------------------

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one SDK call; errors come out classified (see the module docstring)."""
        try:
            return fn()
        except Exception as exc:
            raise classify(exc, what=what, default_retry=self.default_retry) from exc

    def get(self, what: str, fn: Callable[[], Any]) -> dict[str, Any] | None:
        """A GET returning the resource as ARM JSON, or None when it does not exist (404)."""
        try:
            result = fn()
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            if exc.status_code == 404:
                return None
            raise classify(exc, what=what, default_retry=self.default_retry) from exc
        except Exception as exc:
            raise classify(exc, what=what, default_retry=self.default_retry) from exc
        return as_json(result)

    def start(self, what: str, begin: Callable[[StartOnly], Any]) -> Started:
        """Start a long-running operation (`begin(polling)` calls an SDK `begin_*` with `polling=`)."""
        polling = StartOnly(self.default_retry)
        self.call(what, lambda: begin(polling))
        if polling.started is None:  # pragma: no cover - the SDK always initializes the poller
            raise TransientProviderError(f"{what}: ARM gave no initial response")
        return polling.started

    def _send(self, what: str, url: str) -> Any:
        client = self.compute  # any ARM client: same credential, same pipeline policies
        try:
            response = client.send_request(HttpRequest("GET", url))
        except Exception as exc:
            raise classify(exc, what=what, default_retry=self.default_retry) from exc
        return response

    def operation_status(self, operation: dict[str, Any]) -> OperationStatus:
        """Where a started operation stands (one GET, no waiting)."""
        what = str(operation.get("what", "operation"))
        url = operation.get("async_url") or operation.get("location_url")
        if not url:
            return OperationStatus("Succeeded", self.default_retry)
        response = self._send(what, str(url))
        retry = retry_after_seconds(response.headers, self.default_retry)
        status = response.status_code
        if status == 429:
            raise Throttled(f"{what}: throttled while polling", retry_after=retry)
        if status >= 500:
            raise TransientProviderError(f"{what}: polling answered HTTP {status}")
        try:
            body = response.json() if response.text() else {}
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if operation.get("async_url"):
            if status >= 400:
                code, message, _ = _arm_error(response)
                return OperationStatus("Failed", retry, body, code, message)
            state = str(body.get("status", "InProgress"))
            if state in ("Succeeded", "Failed", "Canceled"):
                error = body.get("error") or {}
                return OperationStatus(
                    state,
                    retry,
                    body,
                    str(error.get("code")) if error.get("code") else None,
                    str(error.get("message")) if error.get("message") else None,
                )
            return OperationStatus("InProgress", retry, body)
        # Location polling: 202 while running, 200/201/204 when done, 4xx with an ARM error on failure.
        if status == 202:
            return OperationStatus("InProgress", retry, body)
        if status >= 400:
            code, message, _ = _arm_error(response)
            return OperationStatus("Failed", retry, body, code, message)
        return OperationStatus("Succeeded", retry, body)

    def fetch(self, url: str) -> bytes:
        """Download a scriptUri/sourceUri. Private Azure blobs (no SAS) are read with the app's identity;
        no credential is ever sent to any other host."""
        host = urlsplit(url).netloc.lower()
        if (
            url.lower().startswith("https://")
            and host.endswith(".blob.core.windows.net")
            and "sig=" not in url
        ):
            return bytes(
                self.call(f"download {redact(url)}", lambda: self.blob(url).download_blob().readall())
            )
        if self._http is None:
            policies: list[Any] = [RedirectPolicy(), RetryPolicy(retry_total=2, retry_backoff_factor=0.5)]
            self._http = PipelineClient("", policies=policies, transport=self.transport)
        try:
            response = self._http.send_request(HttpRequest("GET", url))
        except Exception as exc:
            raise classify(exc, what=f"download {redact(url)}") from exc
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise TransientProviderError(f"download {redact(url)}: HTTP {response.status_code}")
        if response.status_code != 200:
            raise ArmFailure(
                "ScriptDownloadFailed",
                f"downloading {redact(url)} answered HTTP {response.status_code}",
                status=response.status_code,
            )
        return bytes(response.content)


def redact(url: str) -> str:
    """A URL fit for a log: any query string (SAS tokens live there) is cut off."""
    return url.split("?", 1)[0] + ("?<redacted>" if "?" in url else "")


def as_json(result: Any) -> dict[str, Any]:
    """An SDK model (a mapping over ARM's wire JSON) as a plain dict with ARM's camelCase names."""
    if result is None:
        return {}
    if isinstance(result, dict):
        return result
    as_dict = getattr(result, "as_dict", None)
    if callable(as_dict):
        value = as_dict()
        return value if isinstance(value, dict) else {}
    return dict(result)
