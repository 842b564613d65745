"""The HTTP front door: ASP.NET-style route templates, routePrefix, methods, function keys, and the aiohttp
handler that turns a request into `func.HttpRequest` and a function's output into the HTTP response.

Exceptions:
    RouteError      a route template cannot be parsed (the message names the function and the template)
"""

from __future__ import annotations

import decimal
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import azure.functions as func
from aiohttp import web

from local_runtime.config import LocalHostSettings
from local_runtime.indexing import FunctionInfo
from local_runtime.keys import Keys

log = logging.getLogger("local_runtime.http")

MAX_BODY = 100 * 1024 * 1024  # the host's request size limit (100 MB)


class RouteError(Exception):
    """A route template is not valid."""


# --------------------------------------------------------------------------------------------- constraints
def _int_in(lo: int, hi: int) -> Callable[[str], bool]:
    def check(v: str) -> bool:
        return bool(re.fullmatch(r"[-+]?\d+", v)) and lo <= int(v) <= hi

    return check


def _is_float(v: str) -> bool:
    try:
        float(v)
        return v.strip().lower() not in ("nan", "inf", "-inf", "infinity", "+inf")
    except ValueError:
        return False


def _is_decimal(v: str) -> bool:
    try:
        decimal.Decimal(v)
        return _is_float(v)
    except decimal.InvalidOperation:
        return False


def _is_guid(v: str) -> bool:
    try:
        uuid.UUID(v)
        return True
    except ValueError:
        return False


def _is_datetime(v: str) -> bool:
    try:
        datetime.fromisoformat(v.replace("Z", "+00:00"))
        return True
    except ValueError:
        return False


_SIMPLE: dict[str, Callable[[str], bool]] = {
    "int": _int_in(-(2**31), 2**31 - 1),
    "long": _int_in(-(2**63), 2**63 - 1),
    "bool": lambda v: v.lower() in ("true", "false"),
    "alpha": lambda v: bool(re.fullmatch(r"[A-Za-z]+", v)),
    "guid": _is_guid,
    "datetime": _is_datetime,
    "decimal": _is_decimal,
    "double": _is_float,
    "float": _is_float,
    "required": lambda v: v != "",
    "file": lambda v: "." in v.rsplit("/", 1)[-1],
    "nonfile": lambda v: "." not in v.rsplit("/", 1)[-1],
}


def _constraint(spec: str, where: str) -> Callable[[str], bool]:
    m = re.fullmatch(r"(\w+)(?:\((.*)\))?", spec, flags=re.DOTALL)
    if not m:
        raise RouteError(f"{where}: cannot parse constraint {spec!r}")
    name, arg = m.group(1).lower(), m.group(2)
    if arg is None:
        if name not in _SIMPLE:
            raise RouteError(
                f"{where}: unknown route constraint {name!r} (known: {', '.join(sorted(_SIMPLE))})"
            )
        return _SIMPLE[name]
    try:
        if name == "regex":
            rx = re.compile(arg, re.IGNORECASE)
            return lambda v: rx.search(v) is not None
        nums = [int(x) for x in arg.split(",")]
    except (ValueError, re.error) as exc:
        raise RouteError(f"{where}: bad argument in constraint {spec!r}: {exc}") from exc
    if name == "minlength":
        return lambda v: len(v) >= nums[0]
    if name == "maxlength":
        return lambda v: len(v) <= nums[0]
    if name == "length":
        lo, hi = (nums[0], nums[0]) if len(nums) == 1 else (nums[0], nums[1])
        return lambda v: lo <= len(v) <= hi
    if name == "min":
        return lambda v: _int_in(-(2**63), 2**63 - 1)(v) and int(v) >= nums[0]
    if name == "max":
        return lambda v: _int_in(-(2**63), 2**63 - 1)(v) and int(v) <= nums[0]
    if name == "range":
        return lambda v: _int_in(nums[0], nums[1])(v)
    raise RouteError(f"{where}: unknown route constraint {name!r}")


# --------------------------------------------------------------------------------------------- templates
@dataclass
class _Param:
    name: str
    optional: bool
    catch_all: bool
    default: str | None
    checks: list[Callable[[str], bool]]


def _split_params(segment: str, where: str) -> list[str | _Param]:
    """A segment as literal text and parameters; `{{`/`}}` are literal braces."""
    parts: list[str | _Param] = []
    i, literal = 0, ""
    while i < len(segment):
        c = segment[i]
        if segment.startswith("{{", i) or segment.startswith("}}", i):
            literal += c
            i += 2
            continue
        if c == "}":
            raise RouteError(f"{where}: unmatched '}}'")
        if c != "{":
            literal += c
            i += 1
            continue
        depth, j = 0, i + 1
        while j < len(segment):
            if segment[j] == "(":
                depth += 1
            elif segment[j] == ")":
                depth -= 1
            elif segment[j] == "}" and depth <= 0:
                if segment.startswith("}}", j) and depth < 0:
                    j += 2
                    continue
                break
            j += 1
        if j >= len(segment):
            raise RouteError(f"{where}: unmatched '{{'")
        body = segment[i + 1 : j].replace("}}", "}").replace("{{", "{")
        if literal:
            parts.append(literal)
            literal = ""
        parts.append(_param(body, where))
        i = j + 1
    if literal:
        parts.append(literal)
    return parts


def _param(body: str, where: str) -> _Param:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    m = re.match(r"([A-Za-z_][\w]*)", body)
    if not m:
        raise RouteError(f"{where}: parameter {{{body}}} needs a name")
    name, rest = m.group(1), body[m.end() :]
    default = None
    optional = False
    # constraints: ':' separated, but a regex(...) argument may itself contain ':'
    specs: list[str] = []
    while rest.startswith(":"):
        depth, j = 0, 1
        while j < len(rest):
            if rest[j] == "(":
                depth += 1
            elif rest[j] == ")":
                depth -= 1
            elif depth == 0 and rest[j] in ":=?":
                break
            j += 1
        specs.append(rest[1:j])
        rest = rest[j:]
    if rest.startswith("="):
        default, rest = rest[1:], ""
    if rest == "?":
        optional, rest = True, ""
    if rest:
        raise RouteError(f"{where}: cannot parse parameter {{{body}}}")
    return _Param(
        name,
        optional or catch_all or default is not None,
        catch_all,
        default,
        [_constraint(s, where) for s in specs],
    )


@dataclass
class Route:
    """One function's compiled route template."""

    function: FunctionInfo
    template: str
    regex: re.Pattern[str]
    params: dict[str, _Param]
    methods: frozenset[str] | None
    auth_level: str
    precedence: tuple[int, ...]
    display: str = ""

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.methods is not None and method.upper() not in self.methods:
            return None
        m = self.regex.fullmatch(path)
        if not m:
            return None
        values: dict[str, str] = {}
        for name, p in self.params.items():
            raw = m.group(name)
            if raw is None or raw == "":
                if p.default is not None:
                    values[name] = p.default
                continue
            value = unquote(raw)
            if not all(check(value) for check in p.checks):
                return None
            values[name] = value
        return values


def compile_route(fn: FunctionInfo, route_prefix: str) -> Route:
    """Compile `fn`'s route (default: its name) under `route_prefix` into a case-insensitive matcher."""
    template = str(fn.trigger.get("route") or fn.name).strip("/")
    where = f"function {fn.name!r} route {template!r}"
    full = "/".join(s for s in (route_prefix.strip("/"), template) if s)
    pattern = ""
    params: dict[str, _Param] = {}
    precedence: list[int] = []
    segments = [s for s in full.split("/")] if full else []
    for index, segment in enumerate(segments):
        if not segment:
            raise RouteError(f"{where}: empty segment")
        parts = _split_params(segment, where)
        seg_rx = ""
        only_param = len(parts) == 1 and isinstance(parts[0], _Param)
        for part in parts:
            if isinstance(part, str):
                seg_rx += re.escape(part)
                continue
            if part.name in params:
                raise RouteError(f"{where}: parameter {part.name!r} appears twice")
            params[part.name] = part
            if part.catch_all and index != len(segments) - 1:
                raise RouteError(f"{where}: a catch-all parameter must be the last segment")
            # greedy: ASP.NET matches complex segments right to left ({name}.{ext} on a.b.c: a.b + c)
            body = ".*" if part.catch_all else "[^/]+"
            seg_rx += f"(?P<{part.name}>{body})"
        if only_param:
            p = parts[0]
            assert isinstance(p, _Param)
            precedence.append(5 if p.catch_all else (3 if p.checks else 4))
            if p.optional:
                pattern += f"(?:/{seg_rx})?"
                continue
        else:
            precedence.append(1 if all(isinstance(p, str) for p in parts) else 2)
        pattern += "/" + seg_rx
    methods = fn.trigger.get("methods")
    return Route(
        function=fn,
        template=template,
        regex=re.compile(pattern + "/?", re.IGNORECASE | re.DOTALL),
        params=params,
        methods=frozenset(str(m).upper() for m in methods) if methods else None,
        auth_level=str(fn.trigger.get("authLevel") or "function").lower(),
        precedence=tuple(precedence),
        display=full,
    )


def route_url(base_url: str, route: Route) -> str:
    """The URL `func start` prints for a route (parameters left as `{name}` placeholders)."""
    return base_url.rstrip("/") + "/" + route.display


class Router:
    """All HTTP functions' routes, ordered by ASP.NET route precedence (literal before parameter)."""

    def __init__(self, functions: list[FunctionInfo], route_prefix: str) -> None:
        self.route_prefix = route_prefix
        self.routes = [compile_route(f, route_prefix) for f in functions if f.trigger_type == "httpTrigger"]
        self.routes.sort(key=lambda r: r.precedence)

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        path = "/" + path.strip("/") if path.strip("/") else ""
        for route in self.routes:
            values = route.match(method, path)
            if values is not None:
                return route, values
        return None


# --------------------------------------------------------------------------------------------- handler
HttpInvoke = Callable[[FunctionInfo, func.HttpRequest, dict[str, str]], Awaitable["HttpResult"]]


@dataclass
class HttpResult:
    """What an HTTP function produced: a response, a plain string, nothing, or a failure."""

    response: func.HttpResponse | str | None = None
    failed: bool = False
    headers: dict[str, str] = field(default_factory=dict)


def presented_key(request: web.Request) -> str | None:
    return request.headers.get("x-functions-key") or request.query.get("code")


def to_http_request(request: web.Request, body: bytes, route_params: dict[str, str]) -> func.HttpRequest:
    """The worker's view of a request: comma-joined repeated headers and query values, raw body bytes."""
    headers: dict[str, str] = {}
    for k, v in request.headers.items():
        key = k.lower()
        headers[key] = f"{headers[key]},{v}" if key in headers else v
    params: dict[str, str] = {}
    for k, v in request.query.items():
        params[k] = f"{params[k]},{v}" if k in params else v
    return func.HttpRequest(
        method=request.method.upper(),
        url=str(request.url),
        headers=headers,
        params=params,
        route_params=route_params,
        body=body,
    )


def to_web_response(result: HttpResult) -> web.StreamResponse:
    """Encode a function's HTTP output as the worker's HttpResponseConverter does, then as the host."""
    if result.failed:
        return web.Response(status=500)
    value = result.response
    if value is None:
        return web.Response(status=204)
    if isinstance(value, str):
        return web.Response(
            status=200, body=value.encode(), headers={"Content-Type": "text/plain; charset=utf-8"}
        )
    headers = value.headers
    if "content-type" not in headers:
        mimetype = value.mimetype or "text/plain"
        headers["content-type"] = (
            f"{mimetype}; charset={value.charset}" if mimetype.startswith("text/") else mimetype
        )
    resp = web.Response(status=int(value.status_code), body=value.get_body() or b"")
    cookies: list[str] = []
    for name, v in headers.items():
        if name.lower() == "set-cookie":
            cookies.append(v)
            continue
        resp.headers[name] = v
    for c in cookies:
        resp.headers.add("Set-Cookie", c)
    return resp


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def cors_middleware(settings: LocalHostSettings) -> Any:
    """Core Tools' CORS from local.settings.json `Host.CORS` (`*` or a list of origins)."""

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = bool(origin) and ("*" in settings.cors or (origin or "").rstrip("/") in settings.cors)
        if allowed and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = request.headers[
                "Access-Control-Request-Method"
            ]
            if "Access-Control-Request-Headers" in request.headers:
                response.headers["Access-Control-Allow-Headers"] = request.headers[
                    "Access-Control-Request-Headers"
                ]
        else:
            response = await handler(request)
        if allowed and origin:
            wildcard = "*" in settings.cors and not settings.cors_credentials
            response.headers["Access-Control-Allow-Origin"] = "*" if wildcard else origin
            if settings.cors_credentials:
                response.headers["Access-Control-Allow-Credentials"] = "true"
        return response

    return cors


def make_handler(
    router: Router,
    keys: Keys,
    invoke: HttpInvoke,
    admin: Callable[[web.Request, str], Awaitable[web.StreamResponse]] | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The catch-all aiohttp handler: admin API, then function routes, then the host's landing page."""

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        lowered = path.lower()
        if admin is not None and (lowered == "/admin" or lowered.startswith("/admin/")):
            if not keys.authorized("admin", presented_key(request)):
                return web.Response(status=401)
            return await admin(request, path)
        found = router.resolve(request.method, path)
        if found is None:
            if path.strip("/") == "" and request.method in ("GET", "HEAD"):
                return web.Response(text="Your Functions app is up and running (local_runtime)\n")
            return web.Response(status=404)
        route, values = found
        if not keys.authorized(route.auth_level, presented_key(request)):
            return web.Response(status=401)
        body = await request.read()
        req = to_http_request(request, body, values)
        result = await invoke(route.function, req, values)
        return to_web_response(result)

    return handle
