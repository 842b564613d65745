"""The dashboard in a real browser (Debian's chromium, headless, through Playwright) against the real local
runtime, Azurite and the local provider: sign in with the function key, start a BusyBox build from the
page and watch it live, a failing build's failing step, and the requests that must be refused."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import E2E

pytestmark = pytest.mark.slow

TERMINAL = ("Succeeded", "Failed", "Canceled", "PartiallySucceeded")


def shell(name: str, *lines: str) -> dict[str, object]:
    return {"type": "Shell", "name": name, "inline": list(lines)}


def sign_in(page: Any, dash: E2E, target: str = "/dashboard") -> None:
    """Sign in the way a person does: open a page, get the form, type the key, press Enter."""
    page.goto(dash.runtime.base_url + target)
    assert urlsplit(page.url).path == "/dashboard/signin"
    page.get_by_label("Function key").fill(dash.runtime.key)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: urlsplit(url).path == target)


def template_url(dash: E2E, name: str) -> str:
    return f"/dashboard/templates/{dash.api.subscription}/{dash.api.resource_group}/{name}"


def key_count_in_runtime_log(dash: E2E) -> int:
    assert dash.runtime.log_path is not None
    return dash.runtime.log_path.read_text(errors="replace").count(dash.runtime.key)


def wait_terminal(page: Any, timeout: float = 300) -> list[str]:
    """The states #run-state showed, polled in the page (the page's own script updates it), until terminal."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = page.locator("#run-state").inner_text().strip()
        if not seen or seen[-1] != text:
            seen.append(text)
        if text.split(" ")[0] in TERMINAL:
            return seen
        page.wait_for_timeout(200)
    raise AssertionError(f"the run never ended on the page; states seen: {seen}")


def wait_log(page: Any, needle: str, timeout: float = 180) -> None:
    """Until the page's log tail shows `needle`; on timeout, say what the page showed instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in page.locator("#log").inner_text():
            return
        page.wait_for_timeout(200)
    state = page.locator("#run-state").inner_text()
    tail = "\n".join(page.locator("#log").inner_text().splitlines()[-30:])
    raise AssertionError(f"{needle!r} never appeared in the log tail; run state {state!r}; tail:\n{tail}")


def test_sign_in_run_a_busybox_build_and_watch_it_live(browser: Any, dash: E2E, shots: Path) -> None:
    name = "dash-live"
    template = dash.template("busybox-webpage.json")
    template["properties"]["customize"].append(
        shell(
            "say hello slowly", "echo dashboard-live-marker-one", "sleep 8", "echo dashboard-live-marker-two"
        )
    )
    dash.api.put_template(name, template)
    keys_in_log = key_count_in_runtime_log(dash)

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    requested: list[str] = []
    context.on("request", lambda request: requested.append(request.url))
    page = context.new_page()
    sign_in(page, dash, template_url(dash, name))
    cookie = next(c for c in context.cookies() if c["name"] == "aib_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/dashboard"
    assert dash.runtime.key not in page.content() and dash.runtime.key not in page.url
    assert dash.runtime.key not in cookie["value"]

    page.get_by_role("button", name="Run").click()
    page.wait_for_url(lambda url: "/runs/" in url)
    page.evaluate("window.__sameDocument = true")  # a reload would lose it: the updates come from the script

    # the live tail shows the customizer's output while the run is still going
    wait_log(page, "dashboard-live-marker-one")
    running_state = page.locator("#run-state").inner_text()
    assert running_state.startswith("Running"), running_state
    assert "dashboard-live-marker-two" not in page.locator("#log").inner_text()
    page.screenshot(path=str(shots / "run-live.png"), full_page=True)

    seen = wait_terminal(page)
    assert seen[-1] == "Succeeded", seen
    assert any(s.startswith("Running") for s in seen), seen
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded instead of updating itself"
    assert "dashboard-live-marker-two" in page.locator("#log").inner_text()

    # the timeline: every phase that ran is done, with steps, durations and the customizer's step
    for phase in ("Building", "Customizing", "Validating", "Distributing"):
        assert "done" in page.locator(f".phase:has(.name:text-is('{phase}'))").inner_text(), phase
    step = page.locator("tr.step", has_text="customize[2] (Shell: say hello slowly)")
    assert "succeeded" in step.inner_text()
    seconds = float(step.locator("td").nth(2).inner_text().split()[0])
    assert seconds >= 8, seconds

    # outputs per target and region, with artifact ids and the local VHD as a download
    outputs = page.locator("section[aria-labelledby=outputs-h] article")
    assert outputs.count() == 3
    gallery = page.locator("article", has_text="busybox-gallery")
    assert "westeurope" in gallery.inner_text() and "northeurope" in gallery.inner_text()
    assert "/galleries/demoGallery/images/busybox-webpage/versions/" in gallery.inner_text()
    href = page.get_by_role("link", name="Download the VHD").get_attribute("href")
    vhd = context.request.get(dash.runtime.base_url + href)
    assert vhd.status == 200
    body = vhd.body()
    assert body[-512:][:8] == b"conectix" and len(body) % (1024 * 1024) == 512

    # the SBOM of each output and the signed provenance the run record names, through the session
    vhd_article = page.locator("article", has_text="busybox-vhd")
    spdx = context.request.get(
        dash.runtime.base_url + vhd_article.get_by_role("link", name="SPDX 2.3").get_attribute("href")
    )
    assert spdx.status == 200 and spdx.json()["spdxVersion"] == "SPDX-2.3"
    cdx = vhd_article.get_by_role("link", name="CycloneDX 1.5").get_attribute("href")
    assert context.request.get(dash.runtime.base_url + cdx).json()["specVersion"] == "1.5"
    envelope = context.request.get(
        dash.runtime.base_url
        + page.get_by_role("link", name="Provenance (signed SLSA statement)").get_attribute("href")
    ).json()
    assert envelope["payloadType"] == "application/vnd.in-toto+json" and envelope["signatures"]
    page.screenshot(path=str(shots / "run-succeeded.png"), full_page=True)

    # the templates page lists it with its last run
    page.goto(dash.runtime.base_url + "/dashboard")
    row = page.locator("tr", has_text=name)
    assert "Succeeded" in row.inner_text()
    page.screenshot(path=str(shots / "templates.png"), full_page=True)

    # no CDN, no network: every request the pages made went to the app itself
    assert requested and all(u.startswith(dash.runtime.base_url + "/") for u in requested), {
        u for u in requested if not u.startswith(dash.runtime.base_url + "/")
    }
    assert any(u.endswith("/dashboard/static/dashboard.js") for u in requested)

    # the key never reached a page, a URL or a log line (the runtime's start banner prints it once per
    # function URL, as `func start` does: that count must not grow)
    assert key_count_in_runtime_log(dash) == keys_in_log
    context.close()
    dash.assert_no_leaks()


def test_a_failing_build_shows_its_failing_step(browser: Any, dash: E2E, shots: Path) -> None:
    name = "dash-fails"
    dash.api.put_template(
        name,
        dash.template(
            "busybox-webpage.json",
            customize=[
                shell("fine", "echo first step ok"),
                shell(
                    "breaks", "echo about to fail", "echo 'E: something specific went wrong' >&2", "exit 3"
                ),
            ],
        ),
    )
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, dash, template_url(dash, name))
    page.get_by_role("button", name="Run").click()
    page.wait_for_url(lambda url: "/runs/" in url)
    seen = wait_terminal(page)
    assert seen[-1] == "Failed", seen

    failure = page.locator("section.failure")
    failure.wait_for()
    assert "Failed step: customize[1] (Shell: breaks)" in failure.locator("h2").inner_text()
    assert page.locator("#exit-code").inner_text() == "3"
    assert "E: something specific went wrong" in failure.locator("pre").inner_text()
    assert "failed" in page.locator("tr.step", has_text="customize[1] (Shell: breaks)").inner_text()
    assert "succeeded" in page.locator("tr.step", has_text="customize[0] (Shell: fine)").inner_text()
    assert "failed" in page.locator(".phase:has(.name:text-is('Customizing'))").inner_text()
    page.screenshot(path=str(shots / "run-failed.png"), full_page=True)

    # read-only pages work without JavaScript: same run, a browser with scripts off
    nojs = browser.new_context(java_script_enabled=False)
    plain = nojs.new_page()
    sign_in(plain, dash, template_url(dash, name))
    plain.get_by_role("link", name=page.url.rsplit("/", 1)[1]).click()
    assert "Failed step: customize[1] (Shell: breaks)" in plain.locator("section.failure h2").inner_text()
    assert "E: something specific went wrong" in plain.locator("#log").inner_text()
    nojs.close()
    context.close()
    dash.assert_no_leaks()


def test_requests_without_the_cookie_or_from_another_origin_are_refused(browser: Any, dash: E2E) -> None:
    name = "dash-refused"
    dash.api.put_template(name, dash.template("busybox-webpage.json"))
    base = dash.runtime.base_url
    url = base + template_url(dash, name)

    # no cookie: pages send you to the sign-in form, the live feed and the actions are refused
    anon = browser.new_context()
    r = anon.request.get(url, max_redirects=0)
    assert r.status == 303 and r.headers["location"].startswith("/dashboard/signin?next=")
    assert anon.request.get(url + "/runs/20260101000000-00000000/live").status == 401
    r = anon.request.post(url + "/run", form={"csrf": "x"}, headers={"Origin": base})
    assert r.status == 403
    # a forged or altered session cookie is no session
    anon.add_cookies(
        [{"name": "aib_session", "value": "9999999999.bm9uY2U.forged-mac", "url": base + "/dashboard"}]
    )
    r = anon.request.get(url, max_redirects=0)
    assert r.status == 303 and r.headers["location"].startswith("/dashboard/signin")
    anon.clear_cookies()
    # a wrong key is not accepted
    page = anon.new_page()
    page.goto(base + "/dashboard/signin")
    page.get_by_label("Function key").fill("not-the-key")
    page.get_by_role("button", name="Sign in").click()
    assert "That key was not accepted" in page.get_by_role("alert").inner_text()
    assert not [c for c in anon.cookies() if c["name"] == "aib_session"]
    anon.close()

    # signed in: a forged or missing Origin, or a missing/stale form token, is refused
    context = browser.new_context()
    page = context.new_page()
    sign_in(page, dash, template_url(dash, name))
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    assert csrf
    for headers, form in (
        ({"Origin": "http://evil.example"}, {"csrf": csrf}),
        ({}, {"csrf": csrf}),
        ({"Origin": base}, {}),
        ({"Origin": base}, {"csrf": csrf[:-2] + "xx"}),
    ):
        r = context.request.post(url + "/run", form=form, headers=headers, max_redirects=0)
        assert r.status == 403, (headers, form, r.status)

    # a real cross-site form in the browser: another origin's page posting to the dashboard
    attacker = "http://attacker.invalid"
    page.route(
        attacker + "/**",
        lambda route: route.fulfill(
            content_type="text/html",
            body=f'<form id="f" method="post" action="{url}/run"><input name="csrf" value="{csrf}"></form>'
            '<script>document.getElementById("f").submit()</script>',
        ),
    )
    page.goto(attacker + "/")
    page.wait_for_url(lambda u: u.startswith(base))
    assert "Refused" in page.content()
    assert dash.api.runs(name) == [], "a refused request must not start a run"
    context.close()
