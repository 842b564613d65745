"""Dashboard sign-in sessions and request-forgery checks: pure functions of a secret, a clock and a request.

A session is the cookie `aib_session` = `<expiry>.<nonce>.<mac>`, the mac an HMAC-SHA256 under a key derived
from the host's durable extension system key (a secret the host manages and hands to the app through the
durable client binding on Azure and locally alike), so nothing new is stored and rotating that key ends every
session. The function key itself is checked by the host (see `dashboard.pages.signin`) and never kept.
Every state-changing request needs (1) an `Origin` equal to the page's own origin and (2) a form token bound
to the session (`csrf_token`); the sign-in form, before any session, binds its token to the `aib_signin`
cookie instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

SESSION_COOKIE = "aib_session"
SIGNIN_COOKIE = "aib_signin"
SESSION_SECONDS = 8 * 3600
SIGNIN_SECONDS = 3600
COOKIE_PATH = "/dashboard"


class NoSessionSecretError(Exception):
    """The host gave the app no durable system key to sign sessions with."""


def secret_from_management_url(url: str) -> bytes:
    """The durable extension's system key, from one of its management URLs (its `code` parameter)."""
    codes = parse_qs(urlsplit(url).query).get("code") or []
    if not codes or not codes[0]:
        raise NoSessionSecretError(
            "the durable client binding carries no system key (no 'code' in its management URLs); "
            "the dashboard signs sessions with it: run the app on a Functions host with the Durable extension"
        )
    return codes[0].encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Session:
    """A verified session: its random nonce (what CSRF tokens bind to) and its expiry (Unix seconds)."""

    nonce: str
    expires: int


class Signer:
    """Issues and verifies session tokens and CSRF tokens under one secret."""

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"imagebuilder-dashboard/v1", hashlib.sha256).digest()

    def _mac(self, purpose: str, payload: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}\0{payload}".encode(), hashlib.sha256).digest())

    def issue(self, now: float, ttl: int = SESSION_SECONDS) -> str:
        """A new session token valid for `ttl` seconds from `now`."""
        expires = int(now) + ttl
        nonce = secrets.token_urlsafe(16)
        return f"{expires}.{nonce}.{self._mac('session', f'{expires}.{nonce}')}"

    def verify(self, token: str | None, now: float) -> Session | None:
        """The session of `token`, or None if it is absent, malformed, forged or expired."""
        if not token or len(token) > 200:
            return None
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        expires, nonce, mac = parts
        expected = self._mac("session", f"{expires}.{nonce}")
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            return None
        if int(expires) <= now:
            return None
        return Session(nonce=nonce, expires=int(expires))

    def csrf_token(self, session: Session) -> str:
        """The form token of every state-changing form of this session."""
        return self._mac("csrf", session.nonce)

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token).encode(), self.csrf_token(session).encode())

    def signin_token(self, signin_cookie: str) -> str:
        """The sign-in form's token, bound to its `aib_signin` cookie (there is no session yet)."""
        return self._mac("signin", signin_cookie)

    def check_signin(self, signin_cookie: str | None, token: str | None) -> bool:
        if not signin_cookie or not token:
            return False
        return hmac.compare_digest(str(token).encode(), self.signin_token(signin_cookie).encode())


def new_signin_cookie() -> str:
    return secrets.token_urlsafe(16)


def cookie_header(name: str, value: str, *, max_age: int, secure: bool) -> str:
    """A Set-Cookie value: HttpOnly, SameSite=Strict, path /dashboard, Secure on https."""
    parts = [f"{name}={value}", f"Path={COOKIE_PATH}", f"Max-Age={max_age}", "HttpOnly", "SameSite=Strict"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def read_cookie(header: str | None, name: str) -> str | None:
    """The value of cookie `name` in a Cookie request header."""
    for part in (header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


def own_origin(url: str) -> str:
    """scheme://host[:port] of a request URL, as a browser writes it in `Origin`."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def same_origin(origin_header: str | None, request_url: str) -> bool:
    """Whether a state-changing request comes from this site's own pages: its `Origin` must be present
    (browsers send it on every POST) and equal to the request's own origin."""
    if not origin_header or origin_header.strip().lower() == "null":
        return False
    return origin_header.strip().rstrip("/").lower() == own_origin(request_url)


def safe_next(target: str | None) -> str:
    """Where to go after sign-in: a dashboard path only (never another site, never a scheme)."""
    if (
        target
        and target.startswith(COOKIE_PATH)
        and not target.startswith("//")
        and "\\" not in target
        and all(ord(c) > 31 for c in target)
    ):
        return target
    return COOKIE_PATH


def host_base_url(website_hostname: str) -> str:
    """The app's own base URL from WEBSITE_HOSTNAME: http for a loopback host (local), https otherwise."""
    host = website_hostname.strip().rstrip("/")
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    local = name in ("localhost", "0.0.0.0", "[::1]", "[::]") or name.startswith("127.")  # noqa: S104
    return f"{'http' if local else 'https'}://{host}"
