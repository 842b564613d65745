"""A checking ARM endpoint behind an azure-core HttpTransport, for driving the Azure SDK's real pipeline.

Every request the SDK sends is checked (host, method, path, api-version, bearer token) and every PUT/POST
body against the request models of the api-versions the SDKs send (specs/: required and wrong types get
400 InvalidRequestContent; unknown and read-only properties are problems). Answers follow the Azure REST
API's documented shapes: 201 + Azure-AsyncOperation for PUTs, 202 + Location/Azure-AsyncOperation for
POST actions and DELETEs, operation URLs per resource provider (`.../locations/{loc}/operations/` for VMs
and run commands, `.../DiskOperations/` for disks and snapshots, `.../capsOperations/` for galleries, the
network RP's own), ARM error bodies {"error": {"code", "message"}}. State is kept, so ARM's rules apply.

Service behaviours modelled (each with a regression test of the request the provider once sent):
- Run Command keeps a sliding 4 KB tail of output in its instance view (run-command-handler-linux
  maxTailLen 4096); with outputBlobUri/errorBlobUri it appends the whole streams to those blobs.
- A script that stops the guest agent in the foreground (waagent -deprovision, Sysprep /generalize) never
  finishes its run command (WALinuxAgent#3547); one handed detached to systemd or a task reports, then the
  VM powers off.
- A gallery image version lives in its definition's region and takes a source only from that region;
  targetRegions may not name a region twice ("Duplicate regions are not allowed").
- Trusted Launch: a TrustedLaunch definition takes only a Trusted Launch source, a Standard one only a
  Standard source, a TrustedLaunchSupported one no Trusted Launch VM; no managed image from a Trusted
  Launch VM.
- Dependencies on delete (a NIC in use, a subnet in use, a disk attached or with an active SAS).
- Gallery image versions are listed per definition (GalleryImageVersionList) with the read-only
  publishingProfile.publishedDate ARM sets at create, and deleted with 202 + operation.
- A managed disk's export SAS (beginGetAccess) reads a page blob on *.blob.storage.azure.net: properties,
  Get Page Ranges (never-written pages unlisted), ranged reads only, the SAS alone authorizes.
Problems are collected in `problems`; a test asserts the list is empty.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import HttpTransport

from tests.providers_azure.specs.check import body_problems

ARM = "management.azure.com"
SUB = "00000000-0000-0000-0000-000000000000"
TOKEN = "fake-token-for-tests"

API = {
    "resources": "2025-04-01",
    "network": "2026-03-01",
    "compute": "2026-04-01",
    "disks": "2026-03-02",
    "gallery": "2026-03-03",
}


class FakeCredential:
    """A TokenCredential returning one static token."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        assert scopes == ("https://management.azure.com/.default",) or scopes[0].startswith(
            "https://storage"
        ), scopes
        return AccessToken(TOKEN, int(time.time()) + 3600)


@dataclass
class Fault:
    method: str
    path: str  # regex on the lower-cased path
    status: int
    code: str
    message: str = "injected"
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1


@dataclass
class Op:
    id: str
    remaining: int
    on_done: Callable[[], dict[str, Any] | None]
    error: tuple[str, str] | None = None
    state: str = "InProgress"
    body: dict[str, Any] = field(default_factory=dict)


# Guest behaviour: (vm name, run command name, script) -> (exit code, stdout, stderr)
Guest = Callable[[str, str, str], tuple[int, str, str]]


def default_guest(vm: str, name: str, script: str) -> tuple[int, str, str]:
    """A guest that succeeds and prints what the script echoes as literal marker lines."""
    echoed = re.findall(r"^(?:echo|Write-Output) '(IMAGEBUILDER-[^']*)'$", script, re.MULTILINE)
    return 0, f"ran {name} on {vm}\n" + "".join(f"{line}\n" for line in echoed), ""


# Scripts that stop the guest agent executing and reporting Run Command (WALinuxAgent#3547, #2006, #1792;
# Sysprep stops the Windows guest agent): a run command that runs them itself never reaches a terminal
# state. Only a launcher that hands them to the init system without waiting reports back.
_AGENT_KILLERS = re.compile(r"waagent\S*\s+(-force\s+)?-deprovision|sysprep\.exe[^\n]*/generalize", re.I)
_POWER_OFF = re.compile(r"systemctl poweroff|shutdown -h|poweroff -f|Stop-Computer", re.I)
_B64 = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")


TAIL = 4096  # Run Command's instance view keeps the last 4 KB of each stream
CHUNK = 3000  # how much output a fake script produces between two reads


def redact_sas(url: str) -> str:
    return url.split("?", 1)[0]


def arm_action(method: str, path: str) -> str:
    """The RBAC action an ARM request needs: the path's type segments plus read/write/delete/<action>."""
    parts = [p for p in path.split("/") if p]
    if "providers" in parts:
        at = parts.index("providers")
        namespace, rest = parts[at + 1], parts[at + 2 :]
    else:
        namespace, rest = "Microsoft.Resources", parts
    if method == "POST":  # .../{type}/{name}/{action}
        return f"{namespace}/{'/'.join(rest[0:-1:2])}/{rest[-1]}/action"
    verb = {"GET": "read", "HEAD": "read", "PUT": "write", "PATCH": "write", "DELETE": "delete"}[method]
    return f"{namespace}/{'/'.join(rest[0::2])}/{verb}"


ROLE = Path(__file__).resolve().parents[2] / "infra" / "imagebuilder-role.json"


def granted_actions(role: Path = ROLE) -> frozenset[str]:
    """The actions of the app's custom role (lower-case): the fake answers 403 to anything else."""
    return frozenset(a.lower() for a in json.loads(role.read_text())["actions"])


def key_of(host: str, path: str) -> str:
    return f"https://{host}{path}"


def _loc(name: Any) -> str:
    return str(name or "").replace(" ", "").lower()


def _decoded_payloads(script: str) -> list[str]:
    out = []
    for token in _B64.findall(script):
        try:
            out.append(base64.b64decode(token, validate=True).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
    return out


def guest_effect(script: str) -> str | None:
    """What a run command's script does to the VM beyond its output: "hang" (it stops the agent in the
    foreground, so the run command never finishes), "poweroff" (a detached payload deprovisions and powers
    the VM off after the run command reported) or None."""
    payloads = _decoded_payloads(script)
    killers = [t for t in [script, *payloads] if _AGENT_KILLERS.search(t)]
    if not killers:
        return None
    detached = ("systemd-run" in script and "--no-block" in script) or (
        "Start-ScheduledTask" in script and "Get-ScheduledTask " not in script
    )
    if not detached or _AGENT_KILLERS.search(script):
        return "hang"
    return "poweroff" if any(_POWER_OFF.search(t) for t in killers) else None


class FakeArm(HttpTransport):
    """Route table over a dict of resources; see the module docstring."""

    def __init__(self, *, location: str = "westus", guest: Guest = default_guest, op_polls: int = 1):
        self.location = location
        self.guest = guest
        self.op_polls = op_polls
        self.resources: dict[str, dict[str, Any]] = {}
        self.ops: dict[str, Op] = {}
        self.faults: list[Fault] = []
        self.op_failures: list[tuple[str, str, str]] = []  # (path regex, code, message)
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.blobs: dict[str, dict[str, Any]] = {}
        self.platform_images: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str | None, Any]] = []
        self.problems: list[str] = []
        self.slept: list[float] = []
        self.scripts: dict[str, str] = {}
        self.chunk = CHUNK
        self.appendblobs: dict[str, bytearray] = {}  # the app's run-command logs (append blobs)
        self.containers: set[str] = set()
        self.sas_issued: list[str] = []  # user delegation SAS URLs handed to run commands
        self.effects: dict[str, str | None] = {}  # run command name -> guest_effect of its script
        self.poll_urls: set[str] = set()
        # what a managed disk's export SAS reads: a fixed VHD (data, then the 512-byte footer), mostly zeros
        self.disk_bytes = bytearray(4 << 20)
        self.disk_bytes[0:512] = b"\xeb\x63\x90" + b"boot sector".ljust(509, b"\0")
        self.disk_bytes[1 << 20 : (1 << 20) + 7] = b"rootfs!"
        self.disk_bytes[-512:] = b"conectix".ljust(512, b"\0")
        self.disk_reads: list[str] = []  # the x-ms-range of every data read of an export
        self._page_lists: dict[int, bytes] = {}  # per disk_bytes object: assign a new one to change it
        self.published_at: Callable[[], str] = lambda: datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self.role: frozenset[str] | None = (
            granted_actions()
        )  # ARM authorizes every request, polls too  # every operation URL handed out (the role must allow reading each)

    # -- HttpTransport ----------------------------------------------------------------------------

    def __enter__(self) -> FakeArm:
        return self

    def __exit__(self, *args: Any) -> None:
        return None

    def open(self) -> None:
        return None

    def close(self) -> None:
        return None

    def sleep(self, duration: float) -> None:
        self.slept.append(duration)

    def send(self, request: Any, **kwargs: Any) -> Any:
        url = urlsplit(request.url)
        method = request.method.upper()
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        raw = request.content if hasattr(request, "content") else request.data
        if isinstance(raw, (bytes, bytearray)):
            raw = raw.decode()
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except (TypeError, ValueError):
                body = raw
        self.requests.append((method, url.path, query.get("api-version"), body))
        status, headers, payload = self._dispatch(
            method, url.netloc, url.path, query, body, request.headers, url.query
        )
        return self._response(request, status, headers, payload, kwargs.get("stream", False))

    def _response(
        self, request: Any, status: int, headers: dict[str, str], payload: Any, stream: bool
    ) -> Any:
        resp = requests.Response()
        resp.status_code = status
        data = (
            b""
            if payload is None
            else (payload if isinstance(payload, bytes) else json.dumps(payload).encode())
        )
        all_headers = {"x-ms-request-id": str(uuid.uuid4()), **headers}
        if payload is not None and not isinstance(payload, bytes):
            all_headers.setdefault("Content-Type", "application/json; charset=utf-8")
        if data or "Content-Length" not in all_headers:  # a HEAD keeps the size it reports
            all_headers["Content-Length"] = str(len(data))
        resp.headers = requests.structures.CaseInsensitiveDict(all_headers)
        resp._content = data
        resp._content_consumed = True
        resp.raw = io.BytesIO(data)
        resp.reason = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content"}.get(status, "Error")
        resp.url = request.url
        from azure.core.pipeline.transport._base import HttpRequest as LegacyRequest

        if isinstance(request, LegacyRequest):
            from azure.core.pipeline.transport._requests_basic import RequestsTransportResponse

            return RequestsTransportResponse(request, resp, 4096)
        from azure.core.rest._requests_basic import RestRequestsTransportResponse

        result = RestRequestsTransportResponse(request=request, internal_response=resp, block_size=4096)
        if not stream:
            result.read()
        return result

    # -- helpers ----------------------------------------------------------------------------------

    def problem(self, text: str) -> None:
        self.problems.append(text)

    @staticmethod
    def error(status: int, code: str, message: str, headers: dict[str, str] | None = None):
        return status, headers or {}, {"error": {"code": code, "message": message}}

    def _op(
        self,
        namespace: str,
        on_done: Callable[[], dict[str, Any] | None],
        path: str,
        polls: int | None = None,
        deleting: bool = False,
    ) -> Op:
        op = Op(str(uuid.uuid4()), self.op_polls if polls is None else polls, on_done)
        for failure in [] if deleting else list(self.op_failures):  # one injected failure hits one PUT/POST
            pattern, code, message = failure
            if re.search(pattern, path.lower()):
                op.error = (code, message)
                self.op_failures.remove(failure)
                break
        self.ops[op.id] = op
        op.namespace = namespace  # type: ignore[attr-defined]
        op.path = path.lower()  # type: ignore[attr-defined]
        return op

    def _async_headers(self, op: Op, namespace: str, location_too: bool = False) -> dict[str, str]:
        """Where each resource provider answers its long-running operations. The disk RP (disks,
        snapshots, grant/revoke access) polls under `.../locations/{loc}/DiskOperations/`, the gallery RP
        under `.../capsOperations/`, VMs and run commands under `.../operations/`: each needs its own
        `<namespace>/locations/<segment>/read` action in the role."""
        base = f"https://{ARM}/subscriptions/{SUB}/providers/{namespace}/locations/{self.location}"
        path = str(getattr(op, "path", ""))
        if namespace == "Microsoft.Network":
            api, segment, results = API["network"], "operations", "operationResults"
        elif re.search(r"/microsoft\.compute/(disks|snapshots)/", path):
            api, segment, results = API["disks"], "DiskOperations", "DiskOperations"
        elif "/microsoft.compute/galleries/" in path:
            api, segment, results = API["gallery"], "capsOperations", "capsOperations"
        else:
            api, segment, results = API["compute"], "operations", "operations"
        headers = {
            "Azure-AsyncOperation": f"{base}/{segment}/{op.id}?api-version={api}",
            "Retry-After": "10",
        }
        if location_too:
            suffix = "&monitor=true" if results == segment else ""
            headers["Location"] = f"{base}/{results}/{op.id}?api-version={api}{suffix}"
        self.poll_urls.update(urlsplit(u).path for k, u in headers.items() if k != "Retry-After")
        return headers

    def finish_all(self) -> None:
        """Complete every operation in flight (for tests that skip the polling)."""
        for op in list(self.ops.values()):
            while op.state == "InProgress":
                self._advance(op)

    def _advance(self, op: Op) -> None:
        if op.state != "InProgress":
            return
        if op.remaining > 0:
            op.remaining -= 1
            return
        if op.error:
            op.state = "Failed"
            self._fail_side(op)
            return
        op.body = op.on_done() or {}
        op.state = "Succeeded"

    def _fail_side(self, op: Op) -> None:
        target = getattr(op, "target", None)
        if target and target in self.resources:
            self.resources[target]["properties"]["provisioningState"] = "Failed"

    def _check_api(self, query: dict[str, str], kind: str, path: str) -> bool:
        want = API[kind]
        got = query.get("api-version")
        if got != want:
            self.problem(f"{path}: api-version {got!r}, expected {want!r} for {kind}")
            return False
        return True

    def _check_body(self, operation: str, method: str, path: str, body: Any):
        """The request body against the REST spec's model of `operation` (specs/check.py): an answer
        of 400 InvalidRequestContent for what ARM refuses, a problem for everything found."""
        refusals, warnings = body_problems(operation, body)
        for text in refusals + warnings:
            self.problem(f"{method} {path}: {text}")
        if refusals:
            return self.error(400, "InvalidRequestContent", "; ".join(refusals))
        return None

    def _check_tags(self, path: str, body: dict[str, Any]) -> None:
        tags = body.get("tags") or {}
        if "imagebuilder-template" not in tags or "imagebuilder-run" not in tags:
            self.problem(
                f"PUT {path}: resource not tagged with imagebuilder-template/imagebuilder-run: {tags}"
            )

    # -- routing ----------------------------------------------------------------------------------

    def _dispatch(
        self, method: str, host: str, path: str, query: dict[str, str], body: Any, headers: Any, raw_query=""
    ):
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and re.search(fault.path, path.lower()):
                fault.times -= 1
                return self.error(fault.status, fault.code, fault.message, fault.headers)
        if host.endswith(".blob.storage.azure.net"):  # a managed disk exported through its SAS
            return self._disk_export(method, host, path, query, headers)
        if host.endswith(".blob.core.windows.net"):
            if (
                path in ("", "/")
                or "restype=container" in raw_query
                or key_of(host, path) in self.appendblobs
            ):
                return self._storage(method, host, path, raw_query, headers, body)
            if method == "PUT" and headers.get("x-ms-blob-type") == "AppendBlob":
                return self._storage(method, host, path, raw_query, headers, body)
            return self._blob(method, host, path, headers)
        if host != ARM:
            key = f"https://{host}{path}"
            if method == "GET" and key in self.redirects:
                return 302, {"Location": self.redirects[key]}, None
            if method == "GET" and key in self.files:
                if "authorization" in {k.lower() for k in headers}:
                    self.problem(f"credential sent to {host}")
                return 200, {"Content-Type": "application/octet-stream"}, self.files[key]
            return self.error(404, "NotFound", f"no file {key}")
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            self.problem(f"{method} {path}: no bearer token")
        action = arm_action(method, path)
        if self.role is not None and action.lower() not in self.role:
            return self.error(
                403,
                "AuthorizationFailed",
                f"The client does not have authorization to perform action '{action}' over scope '{path}'.",
            )
        p = path.lower()
        prefix = f"/subscriptions/{SUB}".lower()
        if not p.startswith(prefix):
            self.problem(f"{method} {path}: wrong subscription")
            return self.error(404, "SubscriptionNotFound", path)
        rest = p[len(prefix) :]
        m = re.fullmatch(
            r"/providers/microsoft\.(compute|network)/locations/[^/]+/"
            r"(operations|operationresults|diskoperations|capsoperations)/([^/]+)",
            rest,
        )
        if m:
            kind = "operationresults" if query.get("monitor") == "true" else m.group(2)
            return self._op_status(kind, m.group(3))
        m = re.fullmatch(r"/operationresults/([^/]+)", rest)
        if m:
            return self._op_status("operationresults", m.group(1))
        if rest == "/resourcegroups" or rest == "/resources":
            self._check_api(query, "resources", path)
            return self._list_tagged(rest, query)
        m = re.fullmatch(r"/resourcegroups/([^/]+)", rest)
        if m:
            self._check_api(query, "resources", path)
            return self._resource_group(method, path, m.group(1), body)
        m = re.fullmatch(r"/resourcegroups/([^/]+)/resources", rest)
        if m:
            self._check_api(query, "resources", path)
            base = f"{prefix}/resourcegroups/{m.group(1)}/providers/"
            items = [
                self._public(r)
                for k, r in self.resources.items()
                if k.startswith(base) and k.count("/") == base.count("/") + 2
            ]
            return 200, {}, {"value": items}
        m = re.fullmatch(
            r"/providers/microsoft\.compute/locations/([^/]+)/publishers/([^/]+)/artifacttypes/vmimage/offers/([^/]+)/skus/([^/]+)/versions(?:/([^/]+))?",
            rest,
        )
        if m:
            self._check_api(query, "compute", path)
            return self._platform_image(m.groups())
        m = re.fullmatch(
            r"/resourcegroups/([^/]+)/providers/microsoft\.network/(networksecuritygroups|virtualnetworks|networkinterfaces|publicipaddresses)(?:/([^/]+))?",
            rest,
        )
        if m:
            self._check_api(query, "network", path)
            return self._network(method, path, m.group(2), m.group(3), body)
        m = re.fullmatch(
            r"/resourcegroups/([^/]+)/providers/microsoft\.compute/disks/([^/]+)(/begingetaccess|/endgetaccess)?",
            rest,
        )
        if m:
            self._check_api(query, "disks", path)
            return self._disk(method, path, m.group(3), body)
        m = re.fullmatch(r"/resourcegroups/([^/]+)/providers/microsoft\.compute/snapshots(?:/([^/]+))?", rest)
        if m:
            self._check_api(query, "disks", path)
            return self._snapshot(method, path, m.group(2), body)
        m = re.fullmatch(
            r"/resourcegroups/([^/]+)/providers/microsoft\.compute/galleries/([^/]+)/images/([^/]+)(/versions(?:/[^/]+)?)?",
            rest,
        )
        if m:
            self._check_api(query, "gallery", path)
            return self._gallery(method, path, m.group(4), query, body)
        m = re.fullmatch(r"/resourcegroups/([^/]+)/providers/microsoft\.compute/images/([^/]+)", rest)
        if m:
            self._check_api(query, "compute", path)
            return self._image(method, path, body)
        m = re.fullmatch(
            r"/resourcegroups/([^/]+)/providers/microsoft\.compute/virtualmachines/([^/]+)(/[a-z]+)?(?:/([^/]+))?",
            rest,
        )
        if m:
            self._check_api(query, "compute", path)
            return self._vm(method, path, m.group(2), m.group(3), m.group(4), query, body)
        self.problem(f"unexpected request {method} {path}")
        return self.error(400, "UnexpectedRequest", f"{method} {path}")

    def _public(self, resource: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(resource))

    def _op_status(self, kind: str, op_id: str):
        op = self.ops.get(op_id)
        if op is None:
            return self.error(404, "NotFound", f"operation {op_id}")
        self._advance(op)
        if kind == "operationresults":
            if op.state == "InProgress":
                return 202, {"Retry-After": "10"}, None
            if op.state == "Failed":
                return self.error(400, op.error[0], op.error[1])  # type: ignore[index]
            return (200, {}, op.body) if op.body else (204, {}, None)
        result: dict[str, Any] = {"name": op.id, "status": op.state, "startTime": "2026-11-27T04:00:00+00:00"}
        if op.state != "InProgress":
            result["endTime"] = "2026-11-27T04:05:00+00:00"
        if op.state == "Failed":
            result["error"] = {"code": op.error[0], "message": op.error[1]}  # type: ignore[index]
        if op.state == "Succeeded" and op.body:
            result["properties"] = {"output": op.body}
        return 200, {"Retry-After": "10"} if op.state == "InProgress" else {}, result

    def _list_tagged(self, rest: str, query: dict[str, str]):
        m = re.fullmatch(r"tagName eq '([^']+)'", query.get("$filter", ""))
        if not m:
            self.problem(f"list {rest} without a tag filter: {query}")
        tag = m.group(1) if m else ""
        items = []
        for key, res in self.resources.items():
            is_group = key.count("/") == 4
            if (rest == "/resourcegroups") == is_group and tag in (res.get("tags") or {}):
                items.append(self._public(res))
        return 200, {}, {"value": items}

    def _store(self, path: str, type_: str, body: dict[str, Any], state: str = "Creating") -> dict[str, Any]:
        res = {
            "id": path,
            "name": path.rsplit("/", 1)[-1],
            "type": type_,
            "location": body.get("location", self.location),
            "tags": body.get("tags") or {},
            "properties": {
                **json.loads(json.dumps(body.get("properties") or {})),
                "provisioningState": state,
            },
        }
        for extra in ("plan", "identity"):
            if extra in body:
                res[extra] = body[extra]
        self.resources[path.lower()] = res
        return res

    def _succeed(self, path: str) -> Callable[[], None]:
        def done() -> None:
            res = self.resources.get(path.lower())
            if res:
                res["properties"]["provisioningState"] = "Succeeded"

        return done

    def _put_lro(
        self,
        path: str,
        type_: str,
        body: dict[str, Any],
        namespace: str,
        extra_done: Callable[[], None] | None = None,
        created: int = 201,
    ):
        exists = path.lower() in self.resources
        res = self._store(path, type_, body, "Updating" if exists else "Creating")
        succeed = self._succeed(path)

        def done() -> None:
            succeed()
            if extra_done:
                extra_done()

        op = self._op(namespace, done, path)
        op.target = path.lower()  # type: ignore[attr-defined]
        if created == 202:  # the disk RP (disks, snapshots) answers 202 + Location, no body
            return 202, self._async_headers(op, namespace, location_too=True), None
        return (200 if exists else created), self._async_headers(op, namespace), self._public(res)

    def _delete_lro(
        self,
        path: str,
        namespace: str,
        blockers: Callable[[], str | None] | None = None,
        cascade: Callable[[], None] | None = None,
    ):
        if path.lower() not in self.resources:
            return 204, {}, None
        if blockers:
            reason = blockers()
            if reason:
                return self.error(400 if namespace == "Microsoft.Network" else 409, *reason.split(":", 1))

        def done() -> None:
            self.resources.pop(path.lower(), None)
            if cascade:
                cascade()

        self.resources[path.lower()]["properties"]["provisioningState"] = "Deleting"
        op = self._op(namespace, done, path, deleting=True)
        op.target = path.lower()  # type: ignore[attr-defined]
        return 202, self._async_headers(op, namespace, location_too=True), None

    def _get(self, path: str):
        # time passes between reads: an operation on this resource moves on
        for op in list(self.ops.values()):
            if getattr(op, "target", None) == path.lower() and op.state == "InProgress":
                self._advance(op)
        res = self.resources.get(path.lower())
        if res is None:
            return self.error(404, "ResourceNotFound", f"The Resource '{path}' was not found.")
        if "_copy_reads" in res:  # a CopyStart snapshot fills in over a few reads
            if res["_copy_reads"] > 0:
                res["_copy_reads"] -= 1
                res["properties"]["completionPercent"] = 50.0
            else:
                res["properties"]["completionPercent"] = 100.0
        return 200, {}, self._public({k: v for k, v in res.items() if not k.startswith("_")})

    # -- resource groups --------------------------------------------------------------------------

    def _resource_group(self, method: str, path: str, name: str, body: Any):
        if method == "GET":
            return self._get(path)
        if method == "PUT":
            refused = self._check_body("Microsoft.Resources/resourceGroups PUT", method, path, body)
            if refused:
                return refused
            # (groups need no tags: a user's staging group is given back without ours)
            res = {
                "id": path,
                "name": path.rsplit("/", 1)[-1],
                "type": "Microsoft.Resources/resourceGroups",
                "location": body["location"],
                "tags": body.get("tags") or {},
                "properties": {"provisioningState": "Succeeded"},
            }
            created = path.lower() not in self.resources
            self.resources[path.lower()] = res
            return (201 if created else 200), {}, self._public(res)
        if method == "DELETE":
            if path.lower() not in self.resources:
                return 404, {}, None

            def done() -> None:
                for key in [
                    k for k in self.resources if k == path.lower() or k.startswith(path.lower() + "/")
                ]:
                    self.resources.pop(key)

            self.resources[path.lower()]["properties"]["provisioningState"] = "Deleting"
            op = self._op("Microsoft.Resources", done, path)
            op.target = path.lower()  # type: ignore[attr-defined]
            # ARM answers a resource group delete with Location only
            location = (
                f"https://{ARM}/subscriptions/{SUB}/operationresults/{op.id}?api-version={API['resources']}"
            )
            self.poll_urls.add(urlsplit(location).path)
            return 202, {"Location": location, "Retry-After": "15"}, None
        self.problem(f"{method} {path}: unexpected")
        return self.error(405, "MethodNotAllowed", method)

    def _platform_image(self, groups: tuple[str, ...]):
        location, publisher, offer, sku, version = groups
        key = f"{publisher}:{offer}:{sku}".lower()
        versions = self.platform_images.get(key, {})
        if version is None:
            return (
                200,
                {},
                [
                    {
                        "name": v,
                        "location": location,
                        "id": f"/Subscriptions/{SUB}/Providers/Microsoft.Compute/Locations/{location}/Publishers/{publisher}/ArtifactTypes/VMImage/Offers/{offer}/Skus/{sku}/Versions/{v}",
                    }
                    for v in versions
                ],
            )
        if version not in versions:
            return self.error(404, "NotFound", "Artifact: VMImage was not found.")
        return (
            200,
            {},
            {
                "name": version,
                "location": location,
                "id": f"/Subscriptions/{SUB}/Providers/Microsoft.Compute/Locations/{location}/Publishers/{publisher}/ArtifactTypes/VMImage/Offers/{offer}/Skus/{sku}/Versions/{version}",
                "properties": versions[version],
            },
        )

    # -- network ----------------------------------------------------------------------------------

    def _network(self, method: str, path: str, kind: str, name: str | None, body: Any):
        if name is None:  # list (public IPs)
            base = path.lower() + "/"
            return (
                200,
                {},
                {"value": [self._public(r) for k, r in self.resources.items() if k.startswith(base)]},
            )
        type_ = {
            "networksecuritygroups": "Microsoft.Network/networkSecurityGroups",
            "virtualnetworks": "Microsoft.Network/virtualNetworks",
            "networkinterfaces": "Microsoft.Network/networkInterfaces",
            "publicipaddresses": "Microsoft.Network/publicIPAddresses",
        }[kind]
        if method == "GET":
            return self._get(path)
        if method == "PUT":
            refused = self._check_body(f"{type_} PUT", method, path, body)
            if refused:
                return refused
            self._check_tags(path, body)
            props = body.get("properties") or {}
            if kind == "networksecuritygroups":
                inbound = [
                    r
                    for r in props.get("securityRules") or []
                    if (r.get("properties") or {}).get("direction") == "Inbound"
                ]
                if inbound:
                    self.problem(f"NSG {path} has inbound rules {inbound}")
            if kind == "networkinterfaces":
                for ipc in props.get("ipConfigurations") or []:
                    if (ipc.get("properties") or {}).get("publicIPAddress"):
                        self.problem(f"NIC {path} has a public IP")
                    subnet = ((ipc.get("properties") or {}).get("subnet") or {}).get("id", "")
                    vnet = subnet.lower().rsplit("/subnets/", 1)[0]
                    if (
                        "/virtualnetworks/" in vnet
                        and vnet.startswith(f"/subscriptions/{SUB}/resourcegroups/it_")
                        and vnet not in self.resources
                    ):
                        return self.error(400, "InvalidResourceReference", f"subnet {subnet} not found")
            if kind == "virtualnetworks":
                for subnet in props.get("subnets") or []:
                    nsg = ((subnet.get("properties") or {}).get("networkSecurityGroup") or {}).get("id", "")
                    if nsg and nsg.lower() not in self.resources:
                        return self.error(400, "InvalidResourceReference", f"NSG {nsg} not found")
            return self._put_lro(path, type_, body, "Microsoft.Network")
        if method == "DELETE":

            def blockers() -> str | None:
                low = path.lower()
                for res in self.resources.values():
                    text = json.dumps(res).lower()
                    if res["id"].lower() == low:
                        continue
                    if (
                        kind == "networkinterfaces"
                        and res["type"] == "Microsoft.Compute/virtualMachines"
                        and low in text
                    ):
                        return "NicInUse:Network Interface is used by existing resource"
                    if (
                        kind == "virtualnetworks"
                        and res["type"] == "Microsoft.Network/networkInterfaces"
                        and low + "/subnets/" in text
                    ):
                        return "InUseSubnetCannotBeDeleted:Subnet is in use"
                    if (
                        kind == "networksecuritygroups"
                        and res["type"] == "Microsoft.Network/virtualNetworks"
                        and low in text
                    ):
                        return "InUseNetworkSecurityGroupCannotBeDeleted:NSG is in use by a subnet"
                return None

            return self._delete_lro(path, "Microsoft.Network", blockers)
        return self.error(405, "MethodNotAllowed", method)

    # -- compute ----------------------------------------------------------------------------------

    def _vm(
        self,
        method: str,
        path: str,
        vm: str,
        action: str | None,
        child: str | None,
        query: dict[str, str],
        body: Any,
    ):
        vm_path = (
            path
            if action is None
            else path[: path.lower().index("/virtualmachines/") + len("/virtualmachines/") + len(vm)]
        )
        res = self.resources.get(vm_path.lower())
        if action is None:
            if method == "GET":
                return self._get(path)
            if method == "PUT":
                return self._put_vm(path, body)
            if method == "DELETE":

                def cascade() -> None:
                    props = res["properties"] if res else {}
                    for nic in (props.get("networkProfile") or {}).get("networkInterfaces") or []:
                        if (nic.get("properties") or {}).get("deleteOption") == "Delete":
                            self.resources.pop(nic["id"].lower(), None)
                    disks = [
                        (props.get("storageProfile") or {}).get("osDisk") or {},
                        *list((props.get("storageProfile") or {}).get("dataDisks") or []),
                    ]
                    for d in disks:
                        if d.get("deleteOption") == "Delete" and d.get("name"):
                            self.resources.pop(
                                f"{vm_path.rsplit('/providers/', 1)[0]}/providers/microsoft.compute/disks/{d['name']}".lower(),
                                None,
                            )
                    for key in [k for k in self.resources if k.startswith(vm_path.lower() + "/")]:
                        self.resources.pop(key)

                return self._delete_lro(path, "Microsoft.Compute", None, cascade)
        if res is None:
            return self.error(404, "ResourceNotFound", f"VM {vm} not found")
        view = res.setdefault("_view", {})
        if action == "/instanceview" and method == "GET":
            if "power_off_in" in view:  # a detached deprovisioning powers the VM off after a while
                view["power_off_in"] -= 1
                if view["power_off_in"] <= 0:
                    del view["power_off_in"]
                    view["statuses"] = [
                        s for s in view.get("statuses", []) if not s.startswith("PowerState/")
                    ] + ["PowerState/stopped"]
                    view["agent_down_reads"] = 10**9
            return (
                200,
                {},
                {
                    "computerName": res["properties"]["osProfile"]["computerName"],
                    "vmAgent": self._agent_status(view),
                    "statuses": [{"code": c, "level": "Info"} for c in view.get("statuses", [])],
                },
            )
        if action == "/deallocate" and method == "POST":

            def done() -> None:
                view["statuses"] = [
                    s for s in view.get("statuses", []) if not s.startswith("PowerState/")
                ] + ["PowerState/deallocated"]

            op = self._op("Microsoft.Compute", done, path)
            return 202, self._async_headers(op, "Microsoft.Compute", location_too=True), None
        if action == "/generalize" and method == "POST":
            if "PowerState/deallocated" not in view.get("statuses", []):
                return self.error(
                    409,
                    "OperationNotAllowed",
                    "Operation 'generalize' is not allowed since the VM is running",
                )
            view["statuses"] = view["statuses"] + ["OSState/generalized"]
            return 200, {}, None
        if action == "/runcommands" and child:
            return self._run_command(method, path, res, vm, child, body)
        self.problem(f"unexpected VM request {method} {path}")
        return self.error(400, "UnexpectedRequest", path)

    def _security_of(self, res: dict[str, Any]) -> str:
        """The security type a source carries: a VM's securityProfile, a snapshot's or disk's, else Standard."""
        props = res.get("properties") or {}
        if res.get("type") == "Microsoft.Compute/virtualMachines":
            return str((props.get("securityProfile") or {}).get("securityType") or "Standard")
        if res.get("type") == "Microsoft.Compute/snapshots":
            origin = self.resources.get(
                str((props.get("creationData") or {}).get("sourceResourceId", "")).lower()
            )
            return self._security_of(origin) if origin else "Standard"
        if res.get("type") == "Microsoft.Compute/disks":
            return str((props.get("securityProfile") or {}).get("securityType") or "Standard")
        return "Standard"

    @staticmethod
    def _agent_status(view: dict[str, Any]) -> dict[str, Any]:
        down = int(view.get("agent_down_reads", 0))
        if down:
            view["agent_down_reads"] = down - 1
        return {
            "vmAgentVersion": "2.7.41491.1102",
            "statuses": [
                {
                    "code": "ProvisioningState/succeeded",
                    "level": "Info",
                    "displayStatus": "Not Ready" if down else "Ready",
                    "time": "2026-11-27T04:05:00+00:00",
                }
            ],
        }

    def _put_vm(self, path: str, body: Any):
        refused = self._check_body("Microsoft.Compute/virtualMachines PUT", "PUT", path, body)
        if refused:
            return refused
        self._check_tags(path, body)
        props = body.get("properties") or {}
        size = (props.get("hardwareProfile") or {}).get("vmSize")
        if not size:
            self.problem(f"PUT {path}: no vmSize")
        storage = props.get("storageProfile") or {}
        if not storage.get("imageReference"):
            self.problem(f"PUT {path}: no imageReference")
        os_profile = props.get("osProfile") or {}
        if not os_profile.get("adminUsername") or not os_profile.get("computerName"):
            self.problem(f"PUT {path}: osProfile incomplete")
        nics = (props.get("networkProfile") or {}).get("networkInterfaces") or []
        for nic in nics:
            if nic["id"].lower() not in self.resources:
                return self.error(400, "InvalidResourceReference", f"NIC {nic['id']} not found")
        if path.lower() in self.resources:
            return self.error(
                409, "PropertyChangeNotAllowed", "Changing property 'osProfile.adminPassword' is not allowed."
            )
        record = dict(body)
        record["properties"] = {k: v for k, v in props.items()}
        record["properties"]["osProfile"] = {k: v for k, v in os_profile.items() if k != "adminPassword"}
        self.vm_bodies = [*getattr(self, "vm_bodies", []), body]

        def done() -> None:
            res = self.resources[path.lower()]
            res["_view"] = {
                "statuses": ["ProvisioningState/succeeded", "PowerState/running"],
                "agent_ready": True,
            }
            rg_path = path[: path.lower().index("/providers/")]
            os_disk = storage.get("osDisk") or {}
            self.resources[f"{rg_path}/providers/Microsoft.Compute/disks/{os_disk.get('name')}".lower()] = {
                "id": f"{rg_path}/providers/Microsoft.Compute/disks/{os_disk.get('name')}",
                "name": os_disk.get("name"),
                "type": "Microsoft.Compute/disks",
                "location": self.location,
                "tags": {},
                "properties": {
                    "provisioningState": "Succeeded",
                    "diskState": "Attached",
                    "diskSizeGB": os_disk.get("diskSizeGB", 30),
                    "securityProfile": {
                        "securityType": (props.get("securityProfile") or {}).get("securityType") or "Standard"
                    },
                },
            }

        return self._put_lro(path, "Microsoft.Compute/virtualMachines", record, "Microsoft.Compute", done)

    def _run_command(self, method: str, path: str, vm_res: dict[str, Any], vm: str, name: str, body: Any):
        """Managed Run Command as the service runs it: output appears a chunk per read; the instance view
        keeps only its last 4 KB (run-command-handler-linux maxTailLen 4096), while outputBlobUri /
        errorBlobUri, when given, receive the whole streams; a script that stops the agent never ends."""
        if method == "PUT":
            refused = self._check_body(
                "Microsoft.Compute/virtualMachines/runCommands PUT", method, path, body
            )
            if refused:
                return refused
            self._check_tags(path, body)
            props = body.get("properties") or {}
            source = props.get("source") or {}
            if not source.get("script"):
                self.problem(f"PUT {path}: no inline script")
            script = source.get("script", "")
            self.scripts[name] = script
            power = [p for p in vm_res.get("_view", {}).get("statuses", []) if p.startswith("PowerState/")]
            if power and power[0] != "PowerState/running":
                return self.error(409, "OperationNotAllowed", f"VM is not running ({power[0]})")
            uris = (props.get("outputBlobUri"), props.get("errorBlobUri"))
            for uri in uris:
                if uri is None:
                    continue
                query = parse_qs(urlsplit(uri).query)
                perms = (query.get("sp") or [""])[0]
                if "sig" not in query or not {"a", "c", "w"} <= set(perms) or "skoid" not in query:
                    self.problem(
                        f"PUT {path}: log blob {redact_sas(uri)} needs a user delegation SAS with acw"
                    )
                self.sas_issued.append(uri)
            effect = guest_effect(script)
            self.effects[name] = effect
            code, out, err = self.guest(vm, name, script)
            status, headers, res = self._put_lro(
                path, "Microsoft.Compute/virtualMachines/runCommands", body, "Microsoft.Compute"
            )
            stored = self.resources[path.lower()]
            stored["_run"] = {"out": out, "err": err, "shown": 0, "code": code, "uris": uris}
            stored["properties"].pop("outputBlobUri", None)  # ARM does not echo SAS URLs back here
            stored["properties"].pop("errorBlobUri", None)
            self._reveal(stored)
            op = self.ops[headers["Azure-AsyncOperation"].split("/operations/")[1].split("?")[0]]
            previous = op.on_done

            def done() -> None:
                previous()
                run = stored["_run"]
                if run["uris"][1] and err:
                    self._handler_appends(run["uris"][1], err)
                stored["properties"]["instanceView"] = {
                    "executionState": "Succeeded" if code == 0 else "Failed",
                    "executionMessage": "",
                    "exitCode": code,
                    "output": out[-TAIL:],
                    "error": err[-TAIL:],
                    "startTime": "2026-11-27T04:01:00+00:00",
                    "endTime": "2026-11-27T04:02:00+00:00",
                    "statuses": [],
                }

            op.on_done = done
            if effect == "hang":  # the agent is gone: nothing reports this command again
                op.remaining = 10**9
                vm_res.setdefault("_view", {})["agent_down_reads"] = 10**9
            elif effect == "poweroff":
                vm_res.setdefault("_view", {})["power_off_in"] = 2
            return status, headers, res
        if method == "GET":
            res = self.resources.get(path.lower())
            if res is not None and "_run" in res and res["_run"]["shown"] < len(res["_run"]["out"]):
                if self.effects.get(name) != "hang":
                    self._reveal(res)
                return 200, {}, self._public({k: v for k, v in res.items() if not k.startswith("_")})
            status, headers, out = self._get(path)
            if status == 200:
                # a run command's operation finishes when the script ends: GETs advance it
                for op in self.ops.values():
                    if getattr(op, "target", None) == path.lower():
                        self._advance(op)
                res = self.resources[path.lower()]
                out = self._public({k: v for k, v in res.items() if not k.startswith("_")})
            return status, headers, out
        if method == "DELETE":
            return self._delete_lro(path, "Microsoft.Compute")
        return self.error(405, "MethodNotAllowed", method)

    def _reveal(self, stored: dict[str, Any]) -> None:
        """The script produces its next chunk of output (one chunk per read of the run command)."""
        run = stored["_run"]
        before = run["shown"]
        run["shown"] = min(len(run["out"]), before + self.chunk)
        if run["uris"][0]:
            self._handler_appends(run["uris"][0], run["out"][before : run["shown"]])
        stored["properties"]["instanceView"] = {
            "executionState": "Running",
            "output": run["out"][: run["shown"]][-TAIL:],
            "error": "",
            "startTime": "2026-11-27T04:01:00+00:00",
        }

    def _image(self, method: str, path: str, body: Any):
        if method == "GET":
            return self._get(path)
        if method == "PUT":
            refused = self._check_body("Microsoft.Compute/images PUT", method, path, body)
            if refused:
                return refused
            self._check_tags(path, body)
            props = body.get("properties") or {}
            snapshot = (((props.get("storageProfile") or {}).get("osDisk") or {}).get("snapshot") or {}).get(
                "id"
            )
            if snapshot:
                snap = self.resources.get(snapshot.lower())
                if snap is None or snap["location"] != body.get("location"):
                    return self.error(
                        400, "InvalidParameter", "the snapshot must exist in the image's region"
                    )
                if snap["properties"].get("completionPercent", 100) < 100:
                    return self.error(409, "OperationNotAllowed", "the snapshot copy is not complete")
                return self._put_lro(path, "Microsoft.Compute/images", body, "Microsoft.Compute")
            source = (props.get("sourceVirtualMachine") or {}).get("id", "")
            vm = self.resources.get(source.lower())
            if vm is None or "OSState/generalized" not in vm.get("_view", {}).get("statuses", []):
                return self.error(
                    409, "OperationNotAllowed", "The source VM must be generalized to create an image."
                )
            if vm["location"] != body.get("location"):
                return self.error(400, "InvalidParameter", "The source VM must be in the image's region.")
            if self._security_of(vm) != "Standard":
                return self.error(
                    400,
                    "InvalidParameter",
                    "Creating an image from a VM with security type TrustedLaunch is not supported.",
                )
            return self._put_lro(path, "Microsoft.Compute/images", body, "Microsoft.Compute")
        if method == "DELETE":
            return self._delete_lro(path, "Microsoft.Compute")
        return self.error(405, "MethodNotAllowed", method)

    def _disk(self, method: str, path: str, action: str | None, body: Any):
        disk_path = path if action is None else path.rsplit("/", 1)[0]
        res = self.resources.get(disk_path.lower())
        if action is None:
            if method == "GET":
                return self._get(path)
            if method == "DELETE":

                def blockers() -> str | None:
                    vm_attached = (
                        any(
                            json.dumps(r).lower().count(f'"name": "{res["name"].lower()}"')
                            and r["type"] == "Microsoft.Compute/virtualMachines"
                            for r in self.resources.values()
                        )
                        if res
                        else False
                    )
                    if vm_attached:
                        return "OperationNotAllowed:Disk is attached to a VM"
                    if res and res["properties"].get("diskState") == "ActiveSAS":
                        return "OperationNotAllowed:Disk has an active SAS"
                    return None

                return self._delete_lro(path, "Microsoft.Compute", blockers)
        if res is None:
            return self.error(404, "ResourceNotFound", path)
        if action == "/begingetaccess":
            refused = self._check_body("Microsoft.Compute/disks/beginGetAccess POST", method, path, body)
            if refused:
                return refused
            if body.get("access") != "Read":
                self.problem(f"{path}: access {body.get('access')}")

            def done() -> dict[str, Any]:
                res["properties"]["diskState"] = "ActiveSAS"
                return {
                    "accessSAS": "https://md-abc.z1.blob.storage.azure.net/xyz/abcd?sv=2018-03-28&sr=b&si=x&sig=SECRET"
                }

            op = self._op("Microsoft.Compute", done, path)
            return 202, self._async_headers(op, "Microsoft.Compute", location_too=True), None
        if action == "/endgetaccess":

            def done() -> None:
                res["properties"]["diskState"] = "Unattached"

            op = self._op("Microsoft.Compute", done, path, polls=0)
            return 202, self._async_headers(op, "Microsoft.Compute", location_too=True), None
        return self.error(405, "MethodNotAllowed", method)

    def _snapshot(self, method: str, path: str, name: str | None, body: Any):
        if name is None:
            base = path.lower() + "/"
            return (
                200,
                {},
                {"value": [self._public(r) for k, r in self.resources.items() if k.startswith(base)]},
            )
        if method == "GET":
            return self._get(path)
        if method == "DELETE":
            return self._delete_lro(path, "Microsoft.Compute")
        if method == "PUT":
            refused = self._check_body("Microsoft.Compute/snapshots PUT", method, path, body)
            if refused:
                return refused
            self._check_tags(path, body)
            data = (body.get("properties") or {}).get("creationData") or {}
            source = str(data.get("sourceResourceId", ""))
            if source.lower() not in self.resources:
                return self.error(404, "ResourceNotFound", f"source {source} not found")
            if (
                data.get("createOption") == "CopyStart"
                and body.get("location") == self.resources[source.lower()]["location"]
            ):
                return self.error(400, "InvalidParameter", "CopyStart copies to another region")
            status, headers, res = self._put_lro(
                path, "Microsoft.Compute/snapshots", body, "Microsoft.Compute", created=202
            )
            if data.get("createOption") == "CopyStart":
                self.resources[path.lower()]["properties"]["completionPercent"] = 0.0
                self.resources[path.lower()]["_copy_reads"] = 1
            return status, headers, res
        return self.error(405, "MethodNotAllowed", method)

    def _gallery(self, method: str, path: str, versions: str | None, query: dict[str, str], body: Any):
        if versions is None:
            if method == "GET":
                return self._get(path)
            return self.error(405, "MethodNotAllowed", method)
        if versions == "/versions":  # GalleryImageVersionList: {"value": [...], "nextLink"?}
            if method != "GET":
                return self.error(405, "MethodNotAllowed", method)
            base = path.lower() + "/"
            return (
                200,
                {},
                {
                    "value": [
                        self._public({k: v for k, v in r.items() if not k.startswith("_")})
                        for key, r in self.resources.items()
                        if key.startswith(base)
                    ]
                },
            )
        if method == "PUT":
            refused = self._check_body("Microsoft.Compute/galleries/images/versions PUT", method, path, body)
            if refused:
                return refused
            self._check_tags(path, body)
            props = body.get("properties") or {}
            storage = props.get("storageProfile") or {}
            src = storage.get("source") or ((storage.get("osDiskImage") or {}).get("source")) or {}
            source = src.get("id") or src.get("virtualMachineId") or ""
            if source.lower() not in self.resources:
                return self.error(400, "InvalidParameter", f"source {source} not found")
            source_res = self.resources[source.lower()]
            definition = self.resources.get(path.lower().rsplit("/versions/", 1)[0], {})
            if _loc(body.get("location")) != _loc(definition.get("location")):
                return self.error(
                    400, "InvalidParameter", "The image version must be in the gallery image's region."
                )
            if _loc(source_res.get("location")) != _loc(body.get("location")):
                return self.error(
                    400,
                    "InvalidParameter",
                    f"The source {source} is in {source_res.get('location')}; it must be in the image "
                    f"version's region {body.get('location')}.",
                )
            wanted = {
                str(f.get("name")): str(f.get("value"))
                for f in (definition.get("properties") or {}).get("features") or []
            }.get("SecurityType", "Standard")
            got = self._security_of(source_res)
            if (wanted == "TrustedLaunch") != (got == "TrustedLaunch") or (
                wanted == "TrustedLaunchSupported" and "virtualMachineId" in src and got != "Standard"
            ):
                return self.error(
                    400,
                    "InvalidParameter",
                    f"A source of security type {got} cannot be used for a gallery image of security type "
                    f"{wanted}.",
                )
            regions = (props.get("publishingProfile") or {}).get("targetRegions") or []
            home = str(body.get("location", "")).replace(" ", "").lower()
            if home not in [str(r.get("name", "")).replace(" ", "").lower() for r in regions]:
                return self.error(
                    400, "InvalidParameter", "targetRegions must include the image version's region"
                )
            names = [str(r.get("name", "")).replace(" ", "").lower() for r in regions]
            if len(set(names)) != len(names):
                return self.error(400, "InvalidParameter", "Duplicate regions are not allowed.")
            for r in regions:
                if int(r.get("regionalReplicaCount", 1)) < 1 or r.get(
                    "storageAccountType", "Standard_LRS"
                ) not in ("Standard_LRS", "Standard_ZRS", "Premium_LRS"):
                    self.problem(f"PUT {path}: bad target region {r}")
            if "hyperVGeneration" in props:
                self.problem(f"PUT {path}: hyperVGeneration belongs to the image definition, not the version")
            status, headers, res = self._put_lro(
                path, "Microsoft.Compute/galleries/images/versions", body, "Microsoft.Compute"
            )
            stored = self.resources[path.lower()]
            # publishingProfile.publishedDate is read-only: ARM sets it when the version is made
            stored["properties"].setdefault("publishingProfile", {})["publishedDate"] = self.published_at()
            stored["_replication"] = [
                {"region": r["name"], "state": "Replicating", "details": "", "progress": 0} for r in regions
            ]
            return status, headers, res
        if method == "GET":
            status, headers, res = self._get(path)
            if status != 200:
                return status, headers, res
            stored = self.resources[path.lower()]
            summary = stored.get("_replication", [])
            # replication advances one region per read
            pending = [s for s in summary if s["state"] == "Replicating"]
            if pending and query.get("$expand") == "ReplicationStatus":
                fail = getattr(self, "replication_failure", None)
                if fail and pending[0]["region"].replace(" ", "").lower() == fail:
                    pending[0].update(
                        state="Failed", details="Replication failed: quota exceeded", progress=40
                    )
                else:
                    pending[0].update(state="Completed", progress=100)
            out = self._public({k: v for k, v in stored.items() if not k.startswith("_")})
            if query.get("$expand") == "ReplicationStatus":
                states = {s["state"] for s in summary}
                out["properties"]["replicationStatus"] = {
                    "aggregatedState": "Completed"
                    if states == {"Completed"}
                    else ("Failed" if "Failed" in states else "InProgress"),
                    "summary": self._public(summary),
                }
            return 200, {}, out
        if method == "DELETE":
            return self._delete_lro(path, "Microsoft.Compute")
        return self.error(405, "MethodNotAllowed", method)

    # -- storage ----------------------------------------------------------------------------------

    def _storage(self, method: str, host: str, path: str, query: str, headers: Any, body: Any):
        """The app's own account: user delegation keys, containers, append blobs (Blob service REST)."""
        key = key_of(host, path)
        common = {
            "x-ms-version": "2025-01-05",
            "ETag": '"0x3"',
            "Last-Modified": "Fri, 27 Nov 2026 04:00:00 GMT",
        }
        if not str(headers.get("Authorization", "")).startswith("Bearer "):
            self.problem(f"{method} {key}: no bearer token for storage")
        if method == "POST" and "comp=userdelegationkey" in query:
            value = base64.b64encode(b"k" * 32).decode()
            xml = (
                '<?xml version="1.0" encoding="utf-8"?><UserDelegationKey>'
                "<SignedOid>11111111-1111-1111-1111-111111111111</SignedOid>"
                "<SignedTid>22222222-2222-2222-2222-222222222222</SignedTid>"
                "<SignedStart>2026-11-27T04:00:00Z</SignedStart><SignedExpiry>2026-11-27T08:00:00Z</SignedExpiry>"
                "<SignedService>b</SignedService><SignedVersion>2025-01-05</SignedVersion>"
                f"<Value>{value}</Value></UserDelegationKey>"
            )
            return 200, {**common, "Content-Type": "application/xml"}, xml.encode()
        if method == "PUT" and "restype=container" in query:
            if key in self.containers:
                return 409, {**common, "x-ms-error-code": "ContainerAlreadyExists"}, None
            self.containers.add(key)
            return 201, common, None
        container = key.rsplit("/", 1)[0].split("/", 4)
        container_key = "/".join(container[:4])
        if method == "PUT" and headers.get("x-ms-blob-type") == "AppendBlob":
            if container_key not in self.containers:
                return 404, {**common, "x-ms-error-code": "ContainerNotFound"}, None
            self.appendblobs[key] = bytearray()
            return 201, common, None
        blob = self.appendblobs.get(key)
        if blob is None:
            return 404, {**common, "x-ms-error-code": "BlobNotFound"}, None
        props = {**common, "x-ms-blob-type": "AppendBlob", "x-ms-blob-committed-block-count": "1"}
        if method == "HEAD":
            return 200, {**props, "Content-Length": str(len(blob))}, None
        if method == "GET":
            m = re.fullmatch(
                r"bytes=(\d+)-(\d*)", str(headers.get("x-ms-range") or headers.get("Range") or "")
            )
            start = int(m.group(1)) if m else 0
            end = min(int(m.group(2)) if m and m.group(2) else len(blob) - 1, len(blob) - 1)
            if start >= len(blob):
                return 416, {**common, "x-ms-error-code": "InvalidRange"}, None
            data = bytes(blob[start : end + 1])
            return (
                206,
                {**props, "Content-Range": f"bytes {start}-{end}/{len(blob)}", "Content-Type": "text/plain"},
                data,
            )
        self.problem(f"unexpected storage request {method} {key}")
        return 400, common, None

    def _handler_appends(self, uri: str, data: str) -> None:
        """What the Run Command handler does with outputBlobUri/errorBlobUri: append to the blob."""
        parts = urlsplit(uri)
        blob = self.appendblobs.get(key_of(parts.netloc, parts.path))
        if blob is None:
            self.problem(f"run command log blob {parts.path} does not exist")
            return
        blob.extend(data.encode())

    def _disk_export(self, method: str, host: str, path: str, query: dict[str, str], headers: Any):
        """A managed disk read through its beginGetAccess SAS (a page blob): properties, the page ranges
        holding data (Get Page Ranges, 512-byte aligned; never-written pages are not listed) and ranged
        reads. Only the SAS authorizes: a bearer token sent here is a problem."""
        key = f"https://{host}{path}"
        if "sig" not in query:
            return 403, {"x-ms-error-code": "AuthenticationFailed"}, None
        if "authorization" in {k.lower() for k in headers}:
            self.problem(f"{method} {key}: a credential sent along with a SAS")
        data = self.disk_bytes
        common = {
            "ETag": '"0x3"',
            "Last-Modified": "Fri, 27 Nov 2026 04:00:00 GMT",
            "x-ms-version": "2025-01-05",
            "x-ms-blob-type": "PageBlob",
        }
        if method == "HEAD":
            return 200, {**common, "Content-Length": str(len(data))}, None
        if method != "GET":
            self.problem(f"unexpected {method} {key} on a disk export")
            return 403, {"x-ms-error-code": "AuthorizationPermissionMismatch"}, None
        if query.get("comp") == "pagelist":
            cached = self._page_lists.get(id(data))
            if cached is None:
                cached = self._page_lists[id(data)] = self._pagelist(data)
            return (
                200,
                {**common, "x-ms-blob-content-length": str(len(data)), "Content-Type": "application/xml"},
                cached,
            )
        return self._disk_read(key, data, headers, common)

    @staticmethod
    def _pagelist(data: bytearray) -> bytes:
        page, ranges, start = 512, [], None
        empty = bytes(page)
        for offset in range(0, len(data), page):
            used = data[offset : offset + page] != empty
            if used and start is None:
                start = offset
            elif not used and start is not None:
                ranges.append((start, offset - 1))
                start = None
        if start is not None:
            ranges.append((start, len(data) - 1))
        xml = "".join(f"<PageRange><Start>{a}</Start><End>{b}</End></PageRange>" for a, b in ranges)
        body = f'<?xml version="1.0" encoding="utf-8"?><PageList>{xml}<NextMarker /></PageList>'
        return body.encode()

    def _disk_read(self, key: str, data: bytearray, headers: Any, common: dict[str, str]):
        wanted = str(headers.get("x-ms-range") or headers.get("Range") or "")
        m = re.match(r"bytes=(\d+)-(\d*)", wanted)
        if not m:
            self.problem(f"GET {key}: a whole-disk read without a range")
            return 416, {}, None
        start, end = int(m.group(1)), min(int(m.group(2) or len(data) - 1), len(data) - 1)
        self.disk_reads.append(wanted)
        return (
            206,
            {
                **common,
                "Content-Range": f"bytes {start}-{end}/{len(data)}",
                "Content-Length": str(end - start + 1),
                "Content-Type": "application/octet-stream",
            },
            bytes(data[start : end + 1]),
        )

    def _blob(self, method: str, host: str, path: str, headers: Any):
        key = f"https://{host}{path}"
        if not str(headers.get("Authorization", "")).startswith("Bearer "):
            self.problem(f"{method} {key}: no bearer token for storage")
        if method == "PUT":
            source = headers.get("x-ms-copy-source")
            if not source or "sig=" not in source:
                self.problem(f"PUT {key}: no SAS copy source")
            self.blobs[key] = {"polls": 1, "status": "pending"}
            return (
                202,
                {
                    "x-ms-copy-id": str(uuid.uuid4()),
                    "x-ms-copy-status": "pending",
                    "ETag": '"0x1"',
                    "Last-Modified": "Fri, 27 Nov 2026 04:00:00 GMT",
                    "x-ms-version": "2025-01-05",
                },
                None,
            )
        if method == "GET" and key in self.files:  # download_blob: a ranged GET answered 206
            data = self.files[key]
            return (
                206,
                {
                    "Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}",
                    "x-ms-blob-type": "BlockBlob",
                    "ETag": '"0x2"',
                    "Last-Modified": "Fri, 27 Nov 2026 04:00:00 GMT",
                    "x-ms-version": "2025-01-05",
                    "Content-Type": "application/octet-stream",
                },
                data,
            )
        if method == "HEAD":
            blob = self.blobs.get(key)
            if blob is None:
                return 404, {"x-ms-error-code": "BlobNotFound"}, None
            if blob["polls"] > 0:
                blob["polls"] -= 1
            else:
                blob["status"] = "success"
            return (
                200,
                {
                    "x-ms-copy-status": blob["status"],
                    "x-ms-copy-progress": "512/1024" if blob["status"] == "pending" else "1024/1024",
                    "x-ms-copy-id": "c",
                    "x-ms-blob-type": "PageBlob",
                    "Content-Length": "1024",
                    "ETag": '"0x1"',
                    "Last-Modified": "Fri, 27 Nov 2026 04:00:00 GMT",
                    "x-ms-version": "2025-01-05",
                },
                None,
            )
        self.problem(f"unexpected storage request {method} {key}")
        return 400, {}, None
