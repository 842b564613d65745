"""Event Grid triggers: the `/runtime/webhooks/eventgrid?functionName=X` endpoint of the Event Grid
extension, with its subscription handshake and notifications (Event Grid and CloudEvents schemas); each
event invokes the function once, decoded by the library's own converter (`func.EventGridEvent` or
`func.CloudEvent`, as the worker does).

The endpoint takes the `eventgrid_extension` system key (kept in `<state>/eventgrid_extension.key`) or the
master key, as the `code` query parameter or the `x-functions-key` header.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from azure.functions import meta
from azure.functions.eventgrid import EventGridEventInConverter

from local_runtime.indexing import FunctionInfo
from local_runtime.keys import load_or_create_system_key

log = logging.getLogger("local_runtime.host")

EVENTGRID_PATH = "/runtime/webhooks/eventgrid"
KEY_FILE = "eventgrid_extension.key"
TRIGGER = "eventGridTrigger"

# (function, the trigger argument for a parameter annotation, binding data) -> whether it succeeded
Invoke = Callable[[FunctionInfo, Callable[[Any], Any], dict[str, Any]], Awaitable[bool]]


def load_system_key(state_dir: Path) -> str:
    """The `eventgrid_extension` system key, created (mode 0600) on first use."""
    return load_or_create_system_key(state_dir / KEY_FILE)


def decode_event(raw: dict[str, Any], annotation: Any) -> Any:
    """One event as the worker hands it over: a `str`/`dict` parameter gets the JSON, anything else the
    library's EventGridEvent (or CloudEvent when the event has `specversion`)."""
    text = json.dumps(raw)
    if annotation is str:
        return text
    if annotation is dict:
        return raw
    return EventGridEventInConverter.decode(meta.Datum(type="json", value=text), trigger_metadata={})


def _decoder(raw: dict[str, Any]) -> Callable[[Any], Any]:
    def decode(annotation: Any) -> Any:
        return decode_event(raw, annotation)

    return decode


class EventGridWebhook:
    """The aiohttp handler for the Event Grid extension's webhook, bound to the app's Event Grid functions."""

    def __init__(self, functions: list[FunctionInfo], invoke: Invoke, keys: list[str]) -> None:
        self.functions = {f.name.lower(): f for f in functions if f.trigger_type == TRIGGER}
        self.invoke = invoke
        self.keys = [k for k in keys if k]

    def url(self, base_url: str, fn: FunctionInfo) -> str:
        return f"{base_url}{EVENTGRID_PATH}?functionName={fn.name}&code={self.keys[0]}"

    def _authorized(self, request: web.Request) -> bool:
        given = (request.query.get("code") or request.headers.get("x-functions-key") or "").encode()
        return any(hmac.compare_digest(given, k.encode()) for k in self.keys)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.Response(status=401)
        name = request.query.get("functionName") or ""
        fn = self.functions.get(name.lower())
        if fn is None:
            return web.Response(status=404, text=f"cannot find function: '{name}'")
        if request.method == "OPTIONS":  # CloudEvents webhook validation (abuse protection)
            origin = request.headers.get("WebHook-Request-Origin", "*")
            return web.Response(status=200, headers={"WebHook-Allowed-Origin": origin})
        if request.method != "POST":
            return web.Response(status=404)
        try:
            body = json.loads(await request.read() or b"null")
        except ValueError:
            return web.Response(status=400, text="the body is not JSON (an event or an array of events)")
        events = [body] if isinstance(body, dict) else body
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            return web.Response(status=400, text="the body must be an event or an array of events")
        kind = request.headers.get("aeg-event-type", "")
        if kind == "SubscriptionValidation":
            code = ((events[0].get("data") or {}) if events else {}).get("validationCode")
            log.info("Event Grid subscription validation for function %s", fn.name)
            return web.json_response({"validationResponse": code})
        if kind == "Unsubscribe":
            return web.Response(status=202)
        if kind != "Notification" and not any("specversion" in e for e in events):
            return web.Response(
                status=400, text="aeg-event-type must be SubscriptionValidation or Notification"
            )
        for raw in events:
            binding_data = {k: v for k, v in raw.items() if isinstance(k, str)}
            ok = await self.invoke(fn, _decoder(raw), binding_data)
            if not ok:
                return web.Response(status=500)  # Event Grid retries the delivery
        return web.Response(status=202)
