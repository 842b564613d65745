"""The dashboard's other pages and buttons in the browser: triggers and the next scheduled run, cancel from
the run page, and what makes the pages usable by everyone (labels, names, contrast, keyboard)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.pipeline.schedule import CronSchedule, time_zone
from tests.dashboard.test_dashboard_browser import shell, sign_in, template_url, wait_log, wait_terminal
from tests.e2e.conftest import E2E
from tests.e2e.test_cli import busybox, serve

pytestmark = pytest.mark.slow

YEARLY = "0 0 0 1 1 *"


def put_trigger(dash: E2E, template: str, name: str, body: dict[str, Any]) -> None:
    resp = dash.api.request("PUT", dash.api.template_path(template) + f"/triggers/{name}", body)
    dash.api.expect(resp, 200, 201, 202, what=f"PUT trigger {name}")
    if resp.status == 202:
        dash.api.wait_operation(resp, f"trigger {name}")


def test_templates_page_shows_triggers_and_the_next_scheduled_run(
    browser: Any, dash: E2E, shots: Path
) -> None:
    name = "dash-scheduled"
    dash.api.put_template(name, dash.template("busybox-webpage.json"))
    put_trigger(
        dash, name, "yearly", {"properties": {"kind": "Schedule", "schedule": YEARLY, "timeZone": "UTC"}}
    )
    nxt = CronSchedule.parse(YEARLY).next_after(datetime.now(UTC), time_zone("UTC"))
    assert nxt is not None
    expected = nxt.strftime("%Y-%m-%d %H:%M:%S UTC")

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    sign_in(page, dash)
    row = page.locator("tbody tr", has_text=name)
    text = row.inner_text()
    assert "Schedule" in text and YEARLY in text and expected in text, text
    assert "never run" in text
    page.get_by_role("link", name=name, exact=True).click()
    trigger = page.locator("tr", has_text="yearly")
    assert "Schedule" in trigger.inner_text() and expected in trigger.inner_text()
    assert "This template has not run yet." in page.content()
    context.close()


def test_cancel_from_the_run_page(browser: Any, dash: E2E, shots: Path) -> None:
    name = "dash-cancel"
    dash.api.put_template(
        name,
        dash.template(
            "busybox-webpage.json", customize=[shell("long", "echo dashboard-sleeping", "sleep 300")]
        ),
    )
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    sign_in(page, dash, template_url(dash, name))
    page.get_by_role("button", name="Run").click()
    page.wait_for_url(lambda url: "/runs/" in url)
    wait_log(page, "dashboard-sleeping")
    page.get_by_role("button", name="Cancel this run").click()
    page.wait_for_url(lambda url: "/runs/" in url)
    seen = wait_terminal(page, timeout=240)
    assert seen[-1] == "Canceled", seen
    assert dash.api.last_run_status(name)["runState"] == "Canceled"
    context.close()
    dash.assert_no_leaks()


def test_resume_a_failed_run_from_the_page_after_fixing_the_script(
    browser: Any, dash: E2E, tmp_path: Path, shots: Path
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "first.sh").write_text("echo first | sudo tee /etc/first\n")
    (www / "second.sh").write_text("echo broken-on-purpose; exit 7\n")
    name = "dash-resume"
    with serve(www) as url:
        steps = [
            {"type": "Shell", "name": "first", "scriptUri": f"{url}/first.sh"},
            {"type": "Shell", "name": "second", "scriptUri": f"{url}/second.sh"},
        ]
        assert dash.build(name, busybox(steps))["runState"] == "Failed"
        failed_id = dash.latest_run(name).run.run_id
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        sign_in(page, dash, template_url(dash, name) + f"/runs/{failed_id}")
        assert page.locator("#exit-code").inner_text() == "7"

        (www / "second.sh").write_text("echo second-fixed | sudo tee /etc/second; echo the-fix-ran\n")
        page.get_by_role("button", name="Resume from customize[1] (Shell: second)").click()
        page.wait_for_url(lambda u: "/runs/" in u and not u.endswith(failed_id))
        seen = wait_terminal(page)
        assert seen[-1] == "Succeeded", seen
        assert (
            f"Resumed from run {failed_id} at customize[1] (Shell: second)"
            in page.locator("#live").inner_text()
        )
        assert "succeeded" in page.locator("tr.step", has_text="customize[1] (Shell: second)").inner_text()
        # the step before the failed one came from the step cache: the timeline says so, with its id
        first = page.locator("tr.step", has_text="customize[0] (Shell: first)").inner_text()
        assert "hit" in first, first
        assert "the-fix-ran" in page.locator("#log").inner_text()
        record = dash.latest_run(name)
        assert record.details["resumeFrom"]["runId"] == failed_id

        # a run that did not fail offers no resume
        assert page.get_by_role("button", name="Resume from").count() == 0
        # the template's runs say how many steps each took from the cache
        page.goto(dash.runtime.base_url + template_url(dash, name))
        assert "1 of 2" in page.locator("tr", has_text=record.run.run_id).inner_text()
        context.close()
    dash.assert_no_leaks()


# WCAG 2.1 contrast of every element with its own text against the background it is drawn on.
CONTRAST_JS = """
() => {
  const parse = (c) => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(',').map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const bg = (el) => { for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
    if (c && c.a > 0.5) return c; } return {r: 255, g: 255, b: 255, a: 1}; };
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const style = getComputedStyle(el);
    if (!own || style.visibility === 'hidden' || style.display === 'none' || !el.getClientRects().length) continue;
    if (el.closest('.sr-only') || el.classList.contains('skip')) continue;
    const fg = parse(style.color), back = bg(el);
    const [hi, lo] = [lum(fg), lum(back)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight, 10) >= 700;
    const need = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
    if (ratio < need) out.push(`${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 40)}" ${ratio.toFixed(2)} < ${need}`);
  }
  return out;
}
"""

NAMES_JS = """
() => {
  const out = [];
  for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
    if (!(el.labels && el.labels.length) && !el.getAttribute('aria-label')) out.push('unlabelled ' + el.outerHTML);
  }
  for (const el of document.querySelectorAll('a[href], button')) {
    if (!(el.innerText || el.getAttribute('aria-label') || '').trim()) out.push('no name ' + el.outerHTML);
  }
  return out;
}
"""


def _check_page(page: Any) -> None:
    assert page.evaluate(CONTRAST_JS) == []
    assert page.evaluate(NAMES_JS) == []
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.locator("h1").count() == 1


def test_pages_have_labels_names_contrast_and_work_from_the_keyboard(browser: Any, dash: E2E) -> None:
    name = "dash-a11y"
    template = dash.template(
        "busybox-webpage.json", customize=[shell("breaks", "echo E: broken on purpose >&2", "exit 4")]
    )
    final = dash.build(name, template)
    assert final["runState"] == "Failed"
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()

    page.goto(dash.runtime.base_url + "/dashboard/signin")
    _check_page(page)
    # keyboard only: the key field has the focus on load and Enter submits
    assert page.evaluate("document.activeElement.id") == "key"
    page.keyboard.type(dash.runtime.key)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: url.endswith("/dashboard"))
    _check_page(page)
    # the first Tab reaches the skip link, which moves the focus to the content
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"

    page.goto(dash.runtime.base_url + template_url(dash, name))
    _check_page(page)
    # Tab order reaches the Run button, and focus is visible on it
    for _ in range(30):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == "Run":
            break
    else:
        raise AssertionError("the Run button is not reachable with Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), outline

    page.get_by_role("link", name=dash.latest_run(name).run.run_id).click()
    page.locator("section.failure").wait_for()
    _check_page(page)
    context.close()
