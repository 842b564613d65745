"""Session tokens, form tokens, origin checks and the VHD path rule, without a runtime."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dashboard import session as sess
from dashboard.pages import Refused, local_vhd

NOW = 1_800_000_000.0


def test_a_session_token_verifies_until_it_expires_and_not_after() -> None:
    signer = sess.Signer(b"system-key")
    token = signer.issue(NOW, ttl=60)
    session = signer.verify(token, NOW + 59)
    assert session is not None and session.expires == int(NOW) + 60
    assert signer.verify(token, NOW + 60) is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # mac changed
        lambda t: str(int(t.split(".")[0]) + 3600) + "." + t.split(".", 1)[1],  # expiry extended
        lambda t: "",
        lambda t: "1.2",
        lambda t: t + ".x",
    ],
)
def test_a_forged_or_altered_token_is_refused(mangle: object) -> None:
    signer = sess.Signer(b"system-key")
    token = signer.issue(NOW)
    assert callable(mangle)
    assert signer.verify(mangle(token), NOW) is None


def test_a_token_from_another_secret_is_refused() -> None:
    token = sess.Signer(b"another key").issue(NOW)
    assert sess.Signer(b"system-key").verify(token, NOW) is None


def test_form_tokens_are_bound_to_their_session_and_sign_in_cookie() -> None:
    signer = sess.Signer(b"k")
    one = signer.verify(signer.issue(NOW), NOW)
    two = signer.verify(signer.issue(NOW), NOW)
    assert one and two
    assert signer.check_csrf(one, signer.csrf_token(one))
    assert not signer.check_csrf(one, signer.csrf_token(two))
    assert not signer.check_csrf(one, None)
    assert signer.check_signin("c1", signer.signin_token("c1"))
    assert not signer.check_signin("c2", signer.signin_token("c1"))
    assert not signer.check_signin(None, signer.signin_token("c1"))


def test_the_secret_comes_from_the_durable_management_url() -> None:
    url = (
        "http://127.0.0.1:7071/runtime/webhooks/durabletask/instances/x?taskHub=H&connection=Storage&code=abc"
    )
    assert sess.secret_from_management_url(url) == b"abc"
    with pytest.raises(sess.NoSessionSecretError):
        sess.secret_from_management_url("http://h/runtime/webhooks/durabletask/instances/x?taskHub=H")


def test_origin_must_be_present_and_equal_to_the_pages_own() -> None:
    assert sess.same_origin("http://127.0.0.1:7071", "http://127.0.0.1:7071/dashboard/x/run")
    assert not sess.same_origin("http://127.0.0.1:7072", "http://127.0.0.1:7071/dashboard/x/run")
    assert not sess.same_origin("https://127.0.0.1:7071", "http://127.0.0.1:7071/dashboard/x/run")
    assert not sess.same_origin(None, "http://127.0.0.1:7071/dashboard")
    assert not sess.same_origin("null", "http://127.0.0.1:7071/dashboard")


def test_after_sign_in_only_dashboard_paths() -> None:
    assert sess.safe_next("/dashboard/templates/a/b/c") == "/dashboard/templates/a/b/c"
    for bad in ("https://evil.example/", "//evil.example/dashboard", "/other", "/dashboard\\..", None):
        assert sess.safe_next(bad) == "/dashboard"


def test_cookies_are_http_only_strict_and_secure_on_https() -> None:
    header = sess.cookie_header("aib_session", "v", max_age=10, secure=True)
    assert "HttpOnly" in header and "SameSite=Strict" in header and "Secure" in header
    assert "Path=/dashboard" in header
    assert "Secure" not in sess.cookie_header("aib_session", "v", max_age=10, secure=False)
    assert sess.read_cookie("a=1; aib_session=tok; b=2", "aib_session") == "tok"


def test_host_base_url_is_http_only_for_loopback() -> None:
    assert sess.host_base_url("127.0.0.1:7071") == "http://127.0.0.1:7071"
    assert sess.host_base_url("localhost:7071") == "http://localhost:7071"
    assert sess.host_base_url("myapp.azurewebsites.net") == "https://myapp.azurewebsites.net"


def test_a_vhd_download_is_only_a_file_the_local_provider_wrote(tmp_path: Path) -> None:
    state = tmp_path / "state"
    good = state / "vhds" / "sub" / "rg" / "t" / "run" / "out.vhd"
    good.parent.mkdir(parents=True)
    good.write_bytes(b"x")
    assert local_vhd(good.as_uri(), state) == good
    outside = tmp_path / "secret.vhd"
    outside.write_bytes(b"s")
    link = state / "vhds" / "link.vhd"
    os.symlink(outside, link)
    for uri in (
        outside.as_uri(),
        link.as_uri(),
        (state / "vhds" / ".." / ".." / "secret.vhd").as_uri(),
        (state / "keys.json").as_uri(),
        "https://example.invalid/x.vhd",
        None,
    ):
        with pytest.raises(Refused):
            local_vhd(uri, state)
