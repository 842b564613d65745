"""The dashboard's HTTP functions (`/dashboard/...`): server-rendered pages of templates, runs and their
timelines, the sign-in that turns a function key into a session cookie, the actions (run, cancel) through
`api._builds`, the live view's JSON, local VHD downloads and the static assets.

Pages are anonymous to the host and guarded here: no valid session cookie, no content (a page redirects to
the sign-in form, anything else gets 401); every POST also needs its own origin and the session's form
token (403 otherwise). The function key is checked by the host itself: the sign-in form's key is sent once,
in a header, to `dashboard/session/check` (a function-level route) on the app's own host name, and never
written to a page, a URL or a log line.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import stat
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import aiohttp
import azure.durable_functions as df
import azure.functions as func
import jinja2

from api._arm import ArmError, in_thread, store, template_coordinates
from api._builds import cancel_build, find_run, start_build
from api.runs import _resume_plan, provenance_envelope, sbom_document
from dashboard import session as sess
from dashboard import views
from imagebuilder.pipeline.messages import RunOptions
from imagebuilder.settings import Settings
from imagebuilder.store import RunRecord, Store, StoredTemplate, open_automation

log = logging.getLogger("dashboard")
bp = df.Blueprint()

HERE = Path(__file__).resolve().parent
STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
ANON = func.AuthLevel.ANONYMOUS
BASE = "dashboard/templates/{subscriptionId}/{resourceGroupName}/{imageTemplateName}"
MAX_FORM_BYTES = 16 * 1024
# A VHD is sent whole in one response (Functions HTTP bodies are not streamed): larger ones are shown
# by path only, so that one download cannot take the worker's memory.
MAX_DOWNLOAD_BYTES = 1024 * 1024 * 1024
_VHD_DIRS = ("vhds", "images", "gallery")
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    """A request the dashboard refuses: HTTP status and a sentence for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@cache
def _jinja() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["seconds"] = views.fmt_seconds
    env.filters["when"] = views.fmt_time
    env.filters["q"] = lambda s: quote(str(s), safe="")
    return env


def _settings() -> Settings:
    return Settings.from_env()


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**_SECURITY_HEADERS, **(extra or {})}


def render(
    name: str, status: int = 200, headers: dict[str, str] | None = None, **ctx: Any
) -> func.HttpResponse:
    html = _jinja().get_template(name).render(**ctx)
    return func.HttpResponse(
        html, status_code=status, headers=_headers(headers), mimetype="text/html", charset="utf-8"
    )


def _redirect(location: str, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        b"", status_code=303, headers=_headers({"Location": location, **(headers or {})})
    )


def _secure(req: func.HttpRequest) -> bool:
    return bool(urlsplit(str(req.url)).scheme == "https")


def _signer(client: df.DurableOrchestrationClient) -> sess.Signer:
    urls = client.create_http_management_payload("dashboard")
    return sess.Signer(sess.secret_from_management_url(str(urls["statusQueryGetUri"])))


def _form(req: func.HttpRequest) -> dict[str, str]:
    body = req.get_body() or b""
    if len(body) > MAX_FORM_BYTES:
        raise Refused(413, "The form is too large.")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "The form could not be read.") from None
    return {k: v[0] for k, v in parsed.items()}


def _path(req: func.HttpRequest) -> str:
    parts = urlsplit(str(req.url))
    return str(parts.path) + (f"?{parts.query}" if parts.query else "")


Handler = Callable[..., Awaitable[func.HttpResponse]]


def guarded(*, post: bool = False, api: bool = False) -> Callable[[Handler], Handler]:
    """Run a handler only with a valid session (and, for `post`, its own origin and the session's form
    token). Without one, a page redirects to the sign-in form; anything else is refused."""

    def wrap(fn: Handler) -> Handler:
        @functools.wraps(fn)
        async def handler(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
            correlation = str(uuid.uuid4())
            try:
                signer = _signer(client)
                session = signer.verify(
                    sess.read_cookie(req.headers.get("cookie"), sess.SESSION_COOKIE), time.time()
                )
                if post:
                    if not sess.same_origin(req.headers.get("origin"), req.url):
                        raise Refused(
                            403, "Refused: this request did not come from the dashboard's own pages."
                        )
                    if session is None:
                        raise Refused(403, "Refused: sign in first.")
                    if not signer.check_csrf(session, _form(req).get("csrf")):
                        raise Refused(403, "Refused: the form's token is missing or stale; reload the page.")
                elif session is None:
                    if api:
                        raise Refused(401, "Sign in first.")
                    return _redirect("/dashboard/signin?" + urlencode({"next": _path(req)}))
                assert session is not None
                return await fn(req, client, session=session, csrf=signer.csrf_token(session))
            except Refused as exc:
                return _refusal(exc, api)
            except ArmError as exc:
                return _refusal(Refused(exc.status, exc.message), api)
            except sess.NoSessionSecretError as exc:
                return _refusal(Refused(503, str(exc)), api)
            except Exception:
                log.exception("dashboard request failed (correlation %s)", correlation)
                return _refusal(
                    Refused(500, f"The page could not be shown; retry. Correlation id: {correlation}."), api
                )

        # The host binds parameters from the signature: show it (req, client), not the wrapped one's.
        handler.__signature__ = inspect.signature(_bound_shape, eval_str=True)  # type: ignore[attr-defined]
        handler.__annotations__ = dict(_bound_shape.__annotations__)
        return handler

    return wrap


async def _bound_shape(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    raise NotImplementedError  # only its signature is used


def _refusal(exc: Refused, api: bool) -> func.HttpResponse:
    if api:
        return func.HttpResponse(
            json.dumps({"error": exc.message}),
            status_code=exc.status,
            headers=_headers(),
            mimetype="application/json",
        )
    return render("error.html", status=exc.status, message=exc.message, signed_in=False, csrf="")


# -- sign-in ------------------------------------------------------------------------------------------


@bp.route(route="dashboard/session/check", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def dashboard_session_check(req: func.HttpRequest) -> func.HttpResponse:
    """Answers 204 when the host accepted the function key (this route is function-level): the sign-in
    asks the host this way, so the app never needs to know the keys."""
    return func.HttpResponse(b"", status_code=204, headers={"Cache-Control": "no-store"})


async def _host_accepts(key: str) -> bool:
    """Whether the host takes `key` as a function key: one request to this app's own host name
    (WEBSITE_HOSTNAME, never the request's Host header), the key in a header."""
    hostname = _settings().website_hostname
    if not hostname:
        raise Refused(503, "The host did not say its own name (WEBSITE_HOSTNAME); sign-in is unavailable.")
    url = sess.host_base_url(hostname) + "/dashboard/session/check"
    timeout = aiohttp.ClientTimeout(total=15)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(url, headers={"x-functions-key": key}, allow_redirects=False) as resp,
        ):
            if resp.status in (200, 204):
                return True
            if resp.status in (401, 403):
                return False
            raise Refused(503, f"The host answered {resp.status} when asked to check the key; retry.")
    except aiohttp.ClientError as exc:
        log.warning("key check at %s failed: %s", url, type(exc).__name__)
        raise Refused(503, "The host could not be asked to check the key; retry.") from None


def _signin_page(
    req: func.HttpRequest, signer: sess.Signer, *, status: int = 200, message: str | None = None
) -> func.HttpResponse:
    cookie = sess.read_cookie(req.headers.get("cookie"), sess.SIGNIN_COOKIE)
    headers: dict[str, str] = {}
    if not cookie or len(cookie) > 64:
        cookie = sess.new_signin_cookie()
        headers["Set-Cookie"] = sess.cookie_header(
            sess.SIGNIN_COOKIE, cookie, max_age=sess.SIGNIN_SECONDS, secure=_secure(req)
        )
    nxt = sess.safe_next(req.params.get("next") or _form_next(req))
    return render(
        "signin.html",
        status=status,
        headers=headers,
        token=signer.signin_token(cookie),
        next=nxt,
        message=message,
        signed_in=False,
        csrf="",
    )


def _form_next(req: func.HttpRequest) -> str | None:
    if req.method != "POST":
        return None
    try:
        return _form(req).get("next")
    except Refused:
        return None


@bp.route(route="dashboard/signin", methods=["GET", "POST"], auth_level=ANON)
@bp.durable_client_input(client_name="client")
async def dashboard_signin(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """GET: the sign-in form. POST: the function key, checked by the host, exchanged for a session cookie
    (HttpOnly, SameSite=Strict, 8 hours)."""
    try:
        signer = _signer(client)
        if req.method == "GET":
            return _signin_page(req, signer)
        if not sess.same_origin(req.headers.get("origin"), req.url):
            raise Refused(403, "Refused: this request did not come from the dashboard's own pages.")
        form = _form(req)
        if not signer.check_signin(
            sess.read_cookie(req.headers.get("cookie"), sess.SIGNIN_COOKIE), form.get("token")
        ):
            return _signin_page(req, signer, status=403, message="The form expired; sign in again.")
        key = form.get("key", "").strip()
        if not key or len(key) > 512 or not key.isprintable():
            return _signin_page(req, signer, status=400, message="Enter a function key.")
        if not await _host_accepts(key):
            log.info("dashboard sign-in refused: the host did not accept the key")
            return _signin_page(req, signer, status=401, message="That key was not accepted.")
        token = signer.issue(time.time())
        log.info("dashboard sign-in: new session")
        return _redirect(
            sess.safe_next(form.get("next")),
            {
                "Set-Cookie": sess.cookie_header(
                    sess.SESSION_COOKIE, token, max_age=sess.SESSION_SECONDS, secure=_secure(req)
                )
            },
        )
    except Refused as exc:
        return _refusal(exc, api=False)
    except sess.NoSessionSecretError as exc:
        return _refusal(Refused(503, str(exc)), api=False)


@bp.route(route="dashboard/signout", methods=["POST"], auth_level=ANON)
@bp.durable_client_input(client_name="client")
@guarded(post=True)
async def dashboard_signout(
    req: func.HttpRequest, client: df.DurableOrchestrationClient, *, session: sess.Session, csrf: str
) -> func.HttpResponse:
    """Ends the session in this browser (the cookie is cleared)."""
    return _redirect(
        "/dashboard/signin",
        {"Set-Cookie": sess.cookie_header(sess.SESSION_COOKIE, "", max_age=0, secure=_secure(req))},
    )


# -- static assets -------------------------------------------------------------------------------------


@bp.route(route="dashboard/static/{asset}", methods=["GET"], auth_level=ANON)
def dashboard_static(req: func.HttpRequest) -> func.HttpResponse:
    """The dashboard's stylesheet and script, from this repository (no CDN)."""
    name = str(req.route_params.get("asset") or "")
    mimetype = STATIC.get(name)
    if mimetype is None:
        return func.HttpResponse(b"not found", status_code=404, headers=_headers())
    body = (HERE / "static" / name).read_bytes()
    return func.HttpResponse(
        body,
        status_code=200,
        headers={**_headers(), "Content-Type": mimetype, "Cache-Control": "public, max-age=300"},
    )


# -- pages -------------------------------------------------------------------------------------------


def _template_rows(st: Store, now: datetime) -> list[views.TemplateRow]:
    rows = []
    for sub, rg, name in sorted(open_automation(_settings().storage_connection).template_keys()):
        stored = st.templates.get(sub, rg, name)
        if stored is None:
            continue
        last = st.runs.latest(sub, rg, name) if stored.last_run_id else None
        triggers = [views.trigger_view(t, now) for t in st.triggers.list(sub, rg, name)]
        rows.append(views.TemplateRow(stored, last, triggers))
    return rows


@bp.route(route="dashboard", methods=["GET"], auth_level=ANON)
@bp.durable_client_input(client_name="client")
@guarded()
async def dashboard_templates(
    req: func.HttpRequest, client: df.DurableOrchestrationClient, *, session: sess.Session, csrf: str
) -> func.HttpResponse:
    """Every image template: status, last run, triggers and the next scheduled run."""
    now = datetime.now(UTC)
    rows = await in_thread(_template_rows, store(), now)
    return render("templates.html", rows=rows, now=now, signed_in=True, csrf=csrf, views=views)


def _load(st: Store, req: func.HttpRequest) -> StoredTemplate:
    sub, rg, name = template_coordinates(req)
    stored = st.templates.get(sub, rg, name)
    if stored is None:
        raise Refused(404, f"Image template '{name}' in resource group '{rg}' was not found.")
    return stored


def _template_page(st: Store, req: func.HttpRequest) -> dict[str, Any]:
    stored = _load(st, req)
    now = datetime.now(UTC)
    runs = list(reversed(st.runs.list(stored.subscription_id, stored.resource_group, stored.name)))
    triggers = [
        views.trigger_view(t, now)
        for t in st.triggers.list(stored.subscription_id, stored.resource_group, stored.name)
    ]
    return {
        "t": stored,
        "runs": runs,
        "triggers": triggers,
        "active": next((r for r in runs if r.active), None),
    }


@bp.route(route=BASE, methods=["GET"], auth_level=ANON)
@bp.durable_client_input(client_name="client")
@guarded()
async def dashboard_template(
    req: func.HttpRequest, client: df.DurableOrchestrationClient, *, session: sess.Session, csrf: str
) -> func.HttpResponse:
    """One template: its runs (newest first), triggers, and the run / cancel buttons."""
    ctx = await in_thread(_template_page, store(), req)
    notice = req.params.get("notice")
    return render("template.html", signed_in=True, csrf=csrf, views=views, notice=notice, error=None, **ctx)


def _run_of(st: Store, req: func.HttpRequest) -> tuple[StoredTemplate, RunRecord]:
    stored = _load(st, req)
    run_id = str(req.route_params.get("runId") or "")
    run = find_run(st, stored, run_id)
    if run is None:
        raise Refused(404, f"Run '{run_id}' of image template '{stored.name}' was not found.")
    return stored, run


def _run_view(st: Store, req: func.HttpRequest) -> dict[str, Any]:
    stored, run = _run_of(st, req)
    text = st.runs.log(run.run).read()
    outputs = views.outputs_of(st.runs.outputs(run.run))
    return {
        "t": stored,
        "run": run,
        "log_text": text,
        "log_tail": views.tail(text),
        "phases": views.phases_of(run),
        "steps": views.steps_of(run, text),
        "failure": views.failure_of(run),
        "outputs": outputs,
        "documents": views.documents_of(run, outputs),
        "duration": views.duration(run),
        "is_latest": stored.last_run_id == run.run.run_id,
        "resume": views.resume_of(run, stored),
        "typical": views.typical_seconds(
            st.runs.list(stored.subscription_id, stored.resource_group, stored.name), run
        ),
    }


@bp.route(route=BASE + "/runs/{runId}", methods=["GET"], auth_level=ANON)
@bp.durable_client_input(client_name="client")
@guarded()
async def dashboard_run(
    req: func.HttpRequest, client: df.DurableOrchestrationClient, *, session: sess.Session, csrf: str
) -> func.HttpResponse:
    """One run: its state, the timeline of phases and steps, the failing step, outputs and the log tail."""
    ctx = await in_thread(_run_view, store(), req)
    return render("run.html", signed_in=True, csrf=csrf, views=views, **ctx)


@bp.route(route=BASE + "/runs/{runId}/live", methods=["GET"], auth_level=ANON)
@bp.durable_client_input(client_name="client")
@guarded(api=True)
async def dashboard_run_live(
    req: func.HttpRequest, client: df.DurableOrchestrationClient, *, session: sess.Session, csrf: str
) -> func.HttpResponse:
    """What the run page's script polls: the status section re-rendered and the log text after `offset`."""
    ctx = await in_thread(_run_view, store(), req)
    try:
        offset = max(0, int(req.params.get("offset") or 0))
    except ValueError:
        offset = 0
    text: str = ctx["log_text"]
    if offset > len(text):
        offset = 0
    section = _jinja().get_template("run_status.html").render(signed_in=True, csrf=csrf, views=views, **ctx)
    body = {
        "runState": ctx["run"].run_state,
        "terminal": ctx["run"].terminal,
        "html": section,
        "log": text[offset:],
        "offset": len(text),
        "reset": offset == 0,
    }
    return func.HttpResponse(
        json.dumps(body), status_code=200, headers=_headers(), mimetype="application/json"
    )


@bp.route(route=BASE + "/runs/{runId}/log", methods=["GET"], auth_level=ANON)
@bp.durable_client_input(client_name="client")
@guarded()
async def dashboard_run_log(
    req: func.HttpRequest, client: df.DurableOrchestrationClient, *, session: sess.Session, csrf: str
) -> func.HttpResponse:
    """The run's whole customization.log as text."""
    ctx = await in_thread(_run_view, store(), req)
    return func.HttpResponse(
        ctx["log_text"], status_code=200, headers=_headers(), mimetype="text/plain", charset="utf-8"
    )


def local_vhd(uri: str | None, state_dir: Path) -> Path:
    """The local VHD a run output names, only if it is a regular file the local provider wrote under its
    state directory (`vhds/`, `images/`, `gallery/`), reached without symlinks."""
    path = views.local_file(uri)
    if path is None or not path.endswith(".vhd"):
        raise Refused(404, "This output has no local VHD.")
    real = Path(os.path.realpath(path))
    roots = [Path(os.path.realpath(state_dir / d)) for d in _VHD_DIRS]
    if real != Path(path) or not any(root in real.parents for root in roots):
        raise Refused(403, "This VHD is not one the local provider wrote under its state directory.")
    return real


def _read_vhd(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Refused(403, "This VHD is not a regular file.")
        if info.st_size > MAX_DOWNLOAD_BYTES:
            raise Refused(
                413,
                f"This VHD is {info.st_size} bytes, more than a download here sends "
                f"({MAX_DOWNLOAD_BYTES} bytes); copy it from {path} on the build machine.",
            )
        return f.read()


def _vhd_download(st: Store, req: func.HttpRequest) -> tuple[str, bytes]:
    settings = _settings()
    if settings.provider != "local":
        raise Refused(404, "VHD downloads are for the local provider's outputs.")
    _, run = _run_of(st, req)
    name = str(req.route_params.get("runOutputName") or "")
    output = st.runs.output(run.run, name)
    if output is None:
        raise Refused(404, f"Run output '{name}' was not found.")
    props = output.get("properties") or {}
    path = local_vhd(props.get("artifactUri"), settings.state_dir)
    return f"{run.run.template_name}-{run.run.run_id}-{name}.vhd", _read_vhd(path)


@bp.route(route=BASE + "/runs/{runId}/outputs/{runOutputName}/vhd", methods=["GET"], auth_level=ANON)
@bp.durable_client_input(client_name="client")
@guarded()
async def dashboard_vhd(
    req: func.HttpRequest, client: df.DurableOrchestrationClient, *, session: sess.Session, csrf: str
) -> func.HttpResponse:
    """A local VHD output as a download."""
    filename, data = await in_thread(_vhd_download, store(), req)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in filename)
    return func.HttpResponse(
        data,
        status_code=200,
        headers={
            **_headers(),
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{safe}"',
        },
    )


# -- actions -----------------------------------------------------------------------------------------


async def _action_error(req: func.HttpRequest, csrf: str, exc: ArmError | Refused) -> func.HttpResponse:
    ctx = await in_thread(_template_page, store(), req)
    return render(
        "template.html",
        status=exc.status,
        signed_in=True,
        csrf=csrf,
        views=views,
        notice=None,
        error=exc.message,
        **ctx,
    )


def _run_url(run: RunRecord) -> str:
    r = run.run
    return "/dashboard/templates/" + "/".join(
        quote(x, safe="") for x in (r.subscription_id, r.resource_group, r.template_name, "runs", r.run_id)
    )


@bp.route(route=BASE + "/run", methods=["POST"], auth_level=ANON)
@bp.durable_client_input(client_name="client")
@guarded(post=True)
async def dashboard_run_template(
    req: func.HttpRequest, client: df.DurableOrchestrationClient, *, session: sess.Session, csrf: str
) -> func.HttpResponse:
    """Run the template (as POST .../run does) and go to the new run's page."""
    st = store()
    stored = await in_thread(_load, st, req)
    if stored.provisioning_state == "Deleting":
        return await _action_error(
            req, csrf, Refused(409, f"Image template '{stored.name}' is being deleted.")
        )
    try:
        run = await start_build(client, st, stored)
    except ArmError as exc:
        return await _action_error(req, csrf, exc)
    log.info("dashboard: run %s of %s started", run.run.run_id, stored.name)
    return _redirect(_run_url(run))


@bp.route(route=BASE + "/cancel", methods=["POST"], auth_level=ANON)
@bp.durable_client_input(client_name="client")
@guarded(post=True)
async def dashboard_cancel(
    req: func.HttpRequest, client: df.DurableOrchestrationClient, *, session: sess.Session, csrf: str
) -> func.HttpResponse:
    """Cancel the template's active run (as POST .../cancel does) and go to its page."""
    st = store()
    stored = await in_thread(_load, st, req)
    run = await in_thread(st.runs.latest, stored.subscription_id, stored.resource_group, stored.name)
    if run is None or run.terminal:
        return await _action_error(
            req, csrf, Refused(409, f"Image template '{stored.name}' has no build in progress to cancel.")
        )
    run = await cancel_build(client, st, run)
    log.info("dashboard: run %s of %s canceling", run.run.run_id, stored.name)
    return _redirect(_run_url(run))


@bp.route(route=BASE + "/runs/{runId}/resume", methods=["POST"], auth_level=ANON)
@bp.durable_client_input(client_name="client")
@guarded(post=True)
async def dashboard_resume(
    req: func.HttpRequest, client: df.DurableOrchestrationClient, *, session: sess.Session, csrf: str
) -> func.HttpResponse:
    """Start a run that resumes this failed run at its failed customizer (as POST .../run with
    {"resumeFromRunId"} does; refused when the template changed before that step)."""
    st = store()
    stored, failed = await in_thread(_run_of, st, req)
    try:
        plan = await in_thread(_resume_plan, st, stored, failed.run.run_id)
        run = await start_build(
            client,
            st,
            stored,
            details={"resumeFrom": plan.as_details()},
            options=RunOptions(resume_from_run_id=failed.run.run_id),
        )
    except ArmError as exc:
        return await _action_error(req, csrf, exc)
    log.info("dashboard: run %s of %s resumes run %s", run.run.run_id, stored.name, failed.run.run_id)
    return _redirect(_run_url(run))


def _document(st: Store, req: func.HttpRequest, kind: str) -> tuple[str, bytes]:
    stored, run = _run_of(st, req)
    stem = f"{run.run.template_name}-{run.run.run_id}"
    if kind == "provenance":
        return f"{stem}.provenance.json", json.dumps(provenance_envelope(st, run), indent=2).encode()
    name = str(req.route_params.get("runOutputName") or "")
    fmt = str(req.params.get("format") or "spdx")
    doc = sbom_document(st, stored, run, name, fmt)
    return f"{stem}-{name}.{fmt.lower()}.json", json.dumps(doc, indent=2).encode()


def _json_download(filename: str, data: bytes) -> func.HttpResponse:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in filename)
    return func.HttpResponse(
        data,
        status_code=200,
        headers={
            **_headers(),
            "Content-Type": "application/json",
            "Content-Disposition": f'inline; filename="{safe}"',
        },
    )


@bp.route(route=BASE + "/runs/{runId}/sbom/{runOutputName}", methods=["GET"], auth_level=ANON)
@bp.durable_client_input(client_name="client")
@guarded()
async def dashboard_sbom(
    req: func.HttpRequest, client: df.DurableOrchestrationClient, *, session: sess.Session, csrf: str
) -> func.HttpResponse:
    """A run output's SBOM (`format=spdx|cyclonedx`), the document GET .../runs/{runId}/sbom/{name} gives."""
    return _json_download(*(await in_thread(_document, store(), req, "sbom")))


@bp.route(route=BASE + "/runs/{runId}/provenance", methods=["GET"], auth_level=ANON)
@bp.durable_client_input(client_name="client")
@guarded()
async def dashboard_provenance(
    req: func.HttpRequest, client: df.DurableOrchestrationClient, *, session: sess.Session, csrf: str
) -> func.HttpResponse:
    """The run's signed provenance, the envelope GET .../runs/{runId}/provenance gives."""
    return _json_download(*(await in_thread(_document, store(), req, "provenance")))
