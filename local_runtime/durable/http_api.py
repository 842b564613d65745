"""The Durable extension's HTTP API: the RPC base the Python client calls and the public webhooks.

Both bases serve the same handlers (like the real `HttpApiHandler`); the webhook base needs the
durabletask system key (`code` query parameter or `x-functions-key` header). The RPC base needs no key and
answers loopback clients only, whatever address the host binds (the real host serves it on a separate
127.0.0.1 listener): a call from another address is a 403.
Status codes follow DURABLE-PROTOCOL.md §4.2.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from local_runtime.durable import history as h
from local_runtime.durable.engine import COMPLETED, FAILED, TERMINAL, DurableError, Engine
from local_runtime.durable.store import InstanceRow

if TYPE_CHECKING:
    from local_runtime.durable import DurableHost

RPC_PREFIX = "/durabletask"
WEBHOOK_PREFIX = "/runtime/webhooks/durabletask"
# OrchestrationStatusQueryCondition.PageSize / EntityQuery.PageSize: a listing without `top` is one page of
# 100 with a continuation token (the Python client's get_status_all reads only that first page)
DEFAULT_PAGE_SIZE = 100
_RUNNING_CODES = ("Pending", "Running", "Suspended", "ContinuedAsNew")
# OrchestrationRuntimeStatus names (Enum.TryParse is case-sensitive)
_STATUSES = frozenset(
    ("Running", "Completed", "ContinuedAsNew", "Failed", "Canceled", "Terminated", "Pending", "Suspended")
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _loads_or_none(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


def _jtoken(text: Any) -> Any:
    """`DurableClient.ParseToJToken`: JSON text parsed, "" for blank, the raw string when it is not JSON."""
    if text is None or not isinstance(text, str):
        return text
    text = text.strip()
    if not text:
        return ""
    try:
        return json.loads(text)
    except ValueError:
        return text


def status_payload(row: InstanceRow, *, show_input: bool = True) -> dict[str, Any]:
    return {
        "name": row.name,
        "instanceId": row.instance_id,
        "runtimeStatus": row.status,
        "input": _jtoken(row.input) if show_input else None,
        "customStatus": _jtoken(row.custom_status),
        "output": _jtoken(row.output),
        "createdTime": h.fmt_status_time(datetime.fromtimestamp(row.created, UTC)),
        "lastUpdatedTime": h.fmt_status_time(datetime.fromtimestamp(row.updated, UTC)),
    }


# DTFx OrchestrationStatus, as ExecutionCompleted.OrchestrationStatus is rendered in historyEvents
_ORCHESTRATION_STATUS = {
    0: "Running",
    1: "Completed",
    2: "ContinuedAsNew",
    3: "Failed",
    4: "Canceled",
    5: "Terminated",
    6: "Pending",
    7: "Suspended",
}
_COMPLETIONS = {
    h.TASK_COMPLETED: h.TASK_SCHEDULED,
    h.TASK_FAILED: h.TASK_SCHEDULED,
    h.SUB_ORCHESTRATION_COMPLETED: h.SUB_ORCHESTRATION_CREATED,
    h.SUB_ORCHESTRATION_FAILED: h.SUB_ORCHESTRATION_CREATED,
}


def history_payload(
    events: list[h.Event], show_output: bool, show_input: bool = True
) -> list[dict[str, Any]]:
    """`historyEvents` as DurableClient.GetStatusAsync renders them: every DTFx event with its EventType
    as a name and without EventId/IsPlayed; a TaskScheduled/SubOrchestrationInstanceCreated that has its
    completion is folded into it (FunctionName, ScheduledTime, and Input when showInput); episode markers
    are dropped; Results only with showHistoryOutput; Inputs only with showInput (default true)."""
    items: list[dict[str, Any]] = []
    scheduled: dict[tuple[int, Any], tuple[int, Any, Any, Any]] = {}
    drop: set[int] = set()
    for i, e in enumerate(events):
        t = e["EventType"]
        item = {k: v for k, v in e.items() if k not in ("EventId", "IsPlayed")}
        item["EventType"] = h.EVENT_NAMES.get(t, str(t))
        if t in (h.TASK_SCHEDULED, h.SUB_ORCHESTRATION_CREATED):
            scheduled[(t, e.get("EventId"))] = (i, e.get("Name"), e.get("Timestamp"), e.get("Input"))
            item.pop("Version", None)
        elif t in _COMPLETIONS:
            s = scheduled.get((_COMPLETIONS[t], e.get("TaskScheduledId")))
            if s is not None:
                item["ScheduledTime"] = s[2]
                item["FunctionName"] = s[1]
                if show_input:
                    item["Input"] = s[3]
                drop.add(s[0])
            item.pop("TaskScheduledId", None)
            if t in (h.TASK_COMPLETED, h.SUB_ORCHESTRATION_COMPLETED):
                if show_output:
                    item["Result"] = _jtoken(item.get("Result"))
                else:
                    item.pop("Result", None)
        elif t == h.EXECUTION_STARTED:
            item["FunctionName"] = item.pop("Name", None)
            for k in ("OrchestrationInstance", "ParentInstance", "Version", "Tags"):
                item.pop(k, None)
        elif t == h.EXECUTION_COMPLETED:
            status = item.get("OrchestrationStatus")
            if isinstance(status, int):
                item["OrchestrationStatus"] = _ORCHESTRATION_STATUS.get(status, str(status))
            if show_output:
                item["Result"] = _jtoken(item.get("Result"))
            else:
                item.pop("Result", None)
        elif t == h.TIMER_FIRED:
            item.pop("TimerId", None)
        elif t in (h.ORCHESTRATOR_STARTED, h.ORCHESTRATOR_COMPLETED):
            drop.add(i)
        if not show_input:
            item.pop("Input", None)
        items.append(item)
    return [item for i, item in enumerate(items) if i not in drop]


def _bool(q: str | None, default: bool) -> bool:
    if q is None or q == "":
        return default
    return q.strip().lower() == "true"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"Message": message, "ExceptionMessage": message}, status=status)


def _seconds(q: str | None) -> float | None:
    """`TryGetTimeSpanQueryParameterValue`: a number of seconds, or None when absent or unparsable."""
    try:
        value = float(q) if q else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value >= 0 else None


# The body of the check-status 202 the host itself builds (webhook start, restart, start-and-wait
# timing out): `HttpApiHandler.CreateCheckStatusResponseMessage` leaves out rewindPostUri, which only
# the binding's managementUrls (and so the SDK's create_check_status_response) carry.
_HOST_CHECK_STATUS_KEYS = (
    "id",
    "statusQueryGetUri",
    "sendEventPostUri",
    "terminatePostUri",
    "purgeHistoryDeleteUri",
    "restartPostUri",
    "suspendPostUri",
    "resumePostUri",
)


class DurableHttpApi:
    """aiohttp handlers bound to one engine and one host (for URLs and the system key)."""

    def __init__(self, host: DurableHost, engine: Engine) -> None:
        self.host = host
        self.engine = engine

    def add_routes(self, app: web.Application) -> None:
        for base, webhook in ((RPC_PREFIX, False), (WEBHOOK_PREFIX, True)):
            g = self._webhook_route if webhook else self._rpc_route
            r = _CaseInsensitiveRoutes(app.router)
            prefix = base
            r.add_post(prefix + "/orchestrators/{functionName}", g(self.start))
            r.add_post(prefix + "/orchestrators/{functionName}/{instanceId}", g(self.start))
            for path in (prefix + "/instances", prefix + "/instances/"):
                r.add_get(path, g(self.list_instances))
                r.add_delete(path, g(self.purge_by))
            r.add_get(prefix + "/instances/{instanceId}", g(self.get_status))
            r.add_delete(prefix + "/instances/{instanceId}", g(self.purge))
            r.add_post(prefix + "/instances/{instanceId}/raiseEvent/{eventName}", g(self.raise_event))
            r.add_post(prefix + "/instances/{instanceId}/{operation}", g(self.operation))
            r.add_get(prefix + "/entities", g(self.list_entities))
            r.add_get(prefix + "/entities/", g(self.list_entities))
            r.add_get(prefix + "/entities/{name}", g(self.list_entities))
            r.add_get(prefix + "/entities/{name}/{key}", g(self.get_entity))
            r.add_post(prefix + "/entities/{name}/{key}", g(self.signal_entity))
            r.add_delete(prefix + "/entities/{name}/{key}", g(self.signal_entity))
            # anything else under the base (a wrong method included) is a 404, as in HandleRequestAsync
            r.add_route("*", prefix + "/{tail:.*}", g(self.not_found))

    def _webhook_route(self, handler: Handler) -> Handler:
        return self._ready(self._guard(handler))

    def _rpc_route(self, handler: Handler) -> Handler:
        return self._ready(self._local(handler))

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=404)

    def _ready(self, handler: Handler) -> Handler:
        async def ready(request: web.Request) -> web.StreamResponse:
            if (
                self.engine.store is None
            ):  # between the server starting and DurableHost.start(), or after stop
                return web.Response(
                    status=503, headers={"Retry-After": "1"}, text="durable engine not running"
                )
            return await handler(request)

        return ready

    @staticmethod
    def _local(handler: Handler) -> Handler:
        async def local_only(request: web.Request) -> web.StreamResponse:
            if not is_loopback(request.remote):
                return web.Response(
                    status=403,
                    text="the durable RPC base answers loopback clients only; from another machine use "
                    f"{WEBHOOK_PREFIX}/... with the durabletask system key",
                )
            return await handler(request)

        return local_only

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            given = (request.query.get("code") or request.headers.get("x-functions-key") or "").encode()
            if not any(hmac.compare_digest(given, k.encode()) for k in self.host.accepted_keys()):
                return web.Response(status=401)
            return await handler(request)

        return guarded

    # ------------------------------------------------------------------ orchestrations
    async def start(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["functionName"]
        instance_id = request.match_info.get("instanceId")
        body = await request.read()
        try:
            input_value = json.loads(body) if body.strip() else None
        except ValueError:
            return _error(400, "Invalid JSON content in the request body.")
        timeout = _seconds(request.query.get("timeout"))
        interval = _seconds(request.query.get("pollingInterval"))
        if timeout is not None and interval is not None and interval > timeout:
            return _error(400, f"Total timeout {timeout} should be bigger than retry timeout {interval}")
        try:
            iid = self.engine.start_new(name, instance_id, input_value, request.query.get("version"))
        except DurableError as exc:
            return _error(exc.status, exc.message)
        return await self._respond_started(request, iid, timeout, interval)

    async def _respond_started(
        self, request: web.Request, iid: str, timeout: float | None, interval: float | None
    ) -> web.StreamResponse:
        """The check-status 202, or with `timeout` and `pollingInterval` both given, the host's
        WaitForCompletionOrCreateCheckStatusResponseAsync: 200 + output when Completed, the status
        (200, even for Failed) when Failed/Terminated, the 202 when the time runs out."""
        if timeout is not None and interval is not None:
            deadline = time.monotonic() + timeout
            while True:
                row = self.engine.status_row(iid)
                if row is not None and row.status in TERMINAL:
                    if row.status == COMPLETED:
                        return web.json_response(_loads_or_none(row.output), status=200)
                    return web.json_response(status_payload(row), status=200)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                await asyncio.sleep(max(0.01, min(interval, left)))
        return self._check_status_response(request, iid)

    def _check_status_response(self, request: web.Request, iid: str) -> web.Response:
        """GetClientResponseLinks: the webhook URLs on the origin the request came to."""
        origin = f"{request.scheme}://{request.host}"
        urls = self.host.management_urls(iid)
        payload = {k: urls[k].replace(self.host.base_url, origin, 1) for k in _HOST_CHECK_STATUS_KEYS}
        return web.json_response(
            payload,
            status=202,
            headers={"Location": payload["statusQueryGetUri"], "Retry-After": "10"},
        )

    async def get_status(self, request: web.Request) -> web.StreamResponse:
        iid = request.match_info["instanceId"]
        row = self.engine.status_row(iid)
        if row is None:
            return web.Response(status=404)
        q = request.query
        payload = status_payload(row, show_input=_bool(q.get("showInput"), True))
        if _bool(q.get("showHistory"), False):
            payload["historyEvents"] = history_payload(
                self.engine.history_of(iid),
                _bool(q.get("showHistoryOutput"), False),
                _bool(q.get("showInput"), True),
            )
        if row.status in _RUNNING_CODES:
            return web.json_response(
                payload, status=202, headers={"Location": str(request.url), "Retry-After": "5"}
            )
        if row.status == FAILED and _bool(q.get("returnInternalServerErrorOnFailure"), False):
            return web.json_response(payload, status=500)
        return web.json_response(payload, status=200)

    async def list_instances(self, request: web.Request) -> web.StreamResponse:
        # like the host's TryGet*QueryParameterValue: an unparsable filter is ignored, not an error
        q = request.query
        top = _int_or_none(q.get("top"))
        statuses = [
            s
            for s in (v.strip() for v in ",".join(q.getall("runtimeStatus", [])).split(","))
            if s in _STATUSES
        ]
        try:
            rows, token = self.engine.query(
                created_from=_time_or_none(q.get("createdTimeFrom")),
                created_to=_time_or_none(q.get("createdTimeTo")),
                statuses=statuses or None,
                prefix=q.get("instanceIdPrefix") or None,
                top=top if top and top > 0 else DEFAULT_PAGE_SIZE,
                token=request.headers.get("x-ms-continuation-token"),
            )
        except DurableError as exc:
            return _error(exc.status, exc.message)
        show_input = _bool(q.get("showInput"), True)
        headers = {"x-ms-continuation-token": token} if token else {}
        return web.json_response([status_payload(r, show_input=show_input) for r in rows], headers=headers)

    async def purge(self, request: web.Request) -> web.StreamResponse:
        iid = request.match_info["instanceId"]
        if iid.startswith("@"):  # an entity's instance id: its state and pending operations go
            if not self.engine.purge_entity(iid):
                return web.Response(status=404)
            return web.json_response({"instancesDeleted": 1})
        row = self.engine.status_row(iid)
        if row is None:
            return web.Response(status=404)
        if row.status not in TERMINAL:
            return web.json_response(
                "Only orchestrations in a terminal state can be purged, but the orchestration with "
                f"instance ID {iid} has status {row.status}",
                status=412,
            )
        n = self.engine.purge(iid)
        if n == 0:
            return web.Response(status=404)
        return web.json_response({"instancesDeleted": n})

    async def purge_by(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        created_from = _time_or_none(q.get("createdTimeFrom"))
        if created_from is None:
            return web.json_response("Please provide value for 'createdTimeFrom' parameter.", status=400)
        created_to = _time_or_none(q.get("createdTimeTo"))  # default: now
        statuses = [
            s
            for s in (v.strip() for v in ",".join(q.getall("runtimeStatus", [])).split(","))
            if s in _STATUSES
        ] or None
        n = self.engine.purge_by(created_from, created_to, statuses)
        if n == 0:
            return web.Response(status=404)
        return web.json_response({"instancesDeleted": n})

    async def raise_event(self, request: web.Request) -> web.StreamResponse:
        iid = request.match_info["instanceId"]
        name = request.match_info["eventName"]
        row = self.engine.status_row(iid)
        if row is None:
            return web.Response(status=404)
        if row.status in TERMINAL:
            return web.Response(status=410)
        if (request.content_type or "").lower() != "application/json":
            return _error(400, "Only application/json request content is supported")
        body = await request.read()
        try:
            value = json.loads(body) if body.strip() else None
        except ValueError:
            return _error(400, "Invalid JSON content in the request body.")
        # ConvertToJToken + re-serialization: a Python client's already-JSON string stays a string (#295).
        self.engine.raise_event(iid, name, json.dumps(value, separators=(",", ":")))
        return web.Response(status=202)

    async def operation(self, request: web.Request) -> web.StreamResponse:
        iid = request.match_info["instanceId"]
        op = request.match_info["operation"].lower()  # operation names match in any case, as routes do
        reason = request.query.get("reason")
        row = self.engine.status_row(iid)
        if row is None:
            if op == "restart":  # RestartAsync throws ArgumentException: a 400, not a 404
                return _error(400, "InstanceId does not match a valid orchestration instance.")
            if op == "rewind":
                return web.json_response(f'No orchestration with instance ID "${iid}" found.', status=404)
            return web.Response(status=404)
        try:
            if op in ("terminate", "suspend", "resume"):
                if row.status in TERMINAL:
                    return web.Response(status=410)
                self.engine.control(iid, op, reason)
                return web.Response(status=202)
            if op == "rewind":
                self.engine.rewind(iid, reason)
                return web.Response(status=202)
            if op == "restart":
                new_id = _bool(request.query.get("restartWithNewInstanceId"), True)
                target = self.engine.restart(iid, new_id)
                q = request.query
                return await self._respond_started(
                    request, target, _seconds(q.get("timeout")), _seconds(q.get("pollingInterval"))
                )
        except DurableError as exc:
            if exc.status == 412:
                return web.json_response(exc.message, status=412)
            if exc.status in (404, 410):
                return web.Response(status=exc.status)
            return _error(exc.status, exc.message)
        return web.Response(status=404)

    # ------------------------------------------------------------------ entities
    @staticmethod
    def _key(request: web.Request) -> str:
        key = request.match_info["key"]
        return "" if key == "$" else key

    async def signal_entity(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        op = "delete" if request.method == "DELETE" else request.query.get("op") or ""
        body = await request.read()
        value: Any = None
        if body:
            text = body.decode("utf-8", errors="replace")
            if (request.content_type or "").lower() == "application/json":
                try:
                    value = json.loads(text)
                except ValueError as exc:
                    return _error(400, f"Could not parse JSON content: {exc}")
            else:  # any other content type: the operation input is the body as a string
                value = text
        self.engine.signal_entity(name, self._key(request), op, value)
        return web.Response(status=202)

    async def get_entity(self, request: web.Request) -> web.StreamResponse:
        state = self.engine.entity_state(request.match_info["name"], self._key(request))
        if state is None:
            return web.Response(status=404)
        return web.Response(text=state, content_type="application/json")

    async def list_entities(self, request: web.Request) -> web.StreamResponse:
        """ListEntitiesAsync: `DurableEntityStatus` items (name lower-cased as in EntityId, state only
        with fetchState=true), filtered by lastOperationTimeFrom/To, paged by top + continuation token."""
        q = request.query
        fetch_state = _bool(q.get("fetchState"), False)
        t_from = _time_or_none(q.get("lastOperationTimeFrom"))
        t_to = _time_or_none(q.get("lastOperationTimeTo"))
        rows = [
            r
            for r in self.engine.list_entities(request.match_info.get("name") or None)
            if (t_from is None or r[3] >= t_from) and (t_to is None or r[3] <= t_to)
        ]
        offset = _offset_token(request.headers.get("x-ms-continuation-token"))
        top = _int_or_none(q.get("top"))
        size = top if top and top > 0 else DEFAULT_PAGE_SIZE
        page = rows[offset : offset + size]
        end = offset + len(page)
        headers = {"x-ms-continuation-token": str(end)} if end < len(rows) else {}
        return web.json_response(
            [
                {
                    "entityId": {"name": n, "key": k},
                    "lastOperationTime": h.fmt_event_time(datetime.fromtimestamp(t, UTC)),
                    "state": _loads_or_none(s) if fetch_state else None,
                }
                for n, k, s, t in page
            ],
            headers=headers,
        )


class _CaseInsensitiveRoutes:
    """Adds aiohttp routes whose literal segments match in any case, as ASP.NET routing (and so the
    real `HttpApiHandler`) does: `/durabletask/Instances/x/Terminate` is `.../instances/x/terminate`."""

    def __init__(self, router: web.UrlDispatcher) -> None:
        self.router = router
        self.n = 0

    def _path(self, path: str) -> str:
        out = []
        for seg in path.split("/"):
            if seg and not seg.startswith("{"):
                self.n += 1
                seg = f"{{_lit{self.n}:(?i:{re.escape(seg)})}}"
            out.append(seg)
        return "/".join(out)

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        self.router.add_route(method, self._path(path), handler)

    def add_get(self, path: str, handler: Handler) -> None:
        # add_get would add a HEAD route too; the real handler has none (a HEAD is a 404)
        self.add_route("GET", path, handler)

    def add_post(self, path: str, handler: Handler) -> None:
        self.add_route("POST", path, handler)

    def add_delete(self, path: str, handler: Handler) -> None:
        self.add_route("DELETE", path, handler)


def is_loopback(remote: str | None) -> bool:
    """The peer address is a loopback address (an IPv4-mapped IPv6 one included); unknown is not."""
    if not remote:
        return False
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _time_or_none(text: str | None) -> float | None:
    try:
        return h.parse_time(text).timestamp() if text else None
    except ValueError:
        return None


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _offset_token(token: str | None) -> int:
    try:
        return max(0, int(token)) if token else 0
    except ValueError:
        return 0


def quote_id(instance_id: str) -> str:
    return quote(instance_id, safe="")
