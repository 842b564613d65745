"""Benchmark: what a dashboard page costs next to the REST API answer with the same data. Builds one BusyBox
template on the local runtime, signs in to the dashboard, then times N requests of each page and of the API
call it stands for (templates page vs GET imageTemplates list, run page and its live feed vs GET
.../runs/{runId} plus its customization.log). Prints medians, p90 and the ratio page / API. Goal: a page
within 3x its API answer. Prints numbers only.

    .venv/bin/python benchmarks/dashboard_pages.py [--requests N]
"""

from __future__ import annotations

import argparse
import http.cookiejar
import re
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.demo import EXAMPLES, ImageBuilderApi, LocalRuntime, load_template, serve_examples  # noqa: E402
from local_runtime.azurite import start_azurite  # noqa: E402


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class Browser:
    """Cookies, no redirects, the page's own Origin on POST: what the dashboard expects of a browser."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect
        )

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with self.opener.open(self.base + path, timeout=60) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def post(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        data = urllib.parse.urlencode(form).encode()
        req = urllib.request.Request(self.base + path, data=data, headers={"Origin": self.base})
        try:
            with self.opener.open(req, timeout=60) as resp:
                return resp.status, resp.headers.get("Location", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Location", "")


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp, start_azurite(Path(tmp) / "az") as az:
        env = {
            "IMAGEBUILDER_PROVIDER": "local",
            "AzureWebJobsStorage": az.connection_string,
            "IMAGEBUILDER_STATE_DIR": str(Path(tmp) / "provider"),
        }
        runtime = LocalRuntime(state_dir=Path(tmp) / "runtime", env=env).start()
        try:
            api = ImageBuilderApi(runtime.base_url, runtime.key)
            with serve_examples() as url:
                name = "bench-dashboard"
                api.put_template(name, load_template(EXAMPLES / "templates" / "busybox-webpage.json", url))
                api.run(name)
                final = api.watch(name, timeout=600, interval=0.5)
            run_id = api.runs(name)[-1]["name"]
            browser = Browser(runtime.base_url)
            _, page = browser.get("/dashboard/signin")
            token = re.search(rb'name="token" value="([^"]+)"', page)
            assert token is not None
            status, _ = browser.post(
                "/dashboard/signin",
                {"token": token.group(1).decode(), "key": runtime.key, "next": "/dashboard"},
            )
            assert status == 303, status
            dash = f"/dashboard/templates/{api.subscription}/{api.resource_group}/{name}"
            rg = f"/subscriptions/{api.subscription}/resourceGroups/{api.resource_group}"
            listing = f"{rg}/providers/Microsoft.VirtualMachineImages/imageTemplates"
            run_api = f"{api.template_path(name)}/runs/{run_id}"
            pairs = {
                "templates page / GET imageTemplates": (
                    lambda: browser.get("/dashboard"),
                    lambda: api.request("GET", listing),
                ),
                "run page / GET run + log": (
                    lambda: browser.get(f"{dash}/runs/{run_id}"),
                    lambda: (
                        api.request("GET", run_api),
                        api.request("GET", run_api + "/logs/customization.log"),
                    ),
                ),
                "live feed / GET run + log": (
                    lambda: browser.get(f"{dash}/runs/{run_id}/live?offset=0"),
                    lambda: (
                        api.request("GET", run_api),
                        api.request("GET", run_api + "/logs/customization.log"),
                    ),
                ),
            }
            print(f"build: {final.get('runState')}; {args.requests} requests each")
            for label, (page_fn, api_fn) in pairs.items():
                page_t, api_t = timed(page_fn, args.requests), timed(api_fn, args.requests)
                p90 = int(len(page_t) * 0.9) - 1
                ratio = statistics.median(page_t) / statistics.median(api_t)
                print(
                    f"{label:<40} page median={statistics.median(page_t) * 1000:7.1f} ms "
                    f"p90={page_t[p90] * 1000:7.1f} ms  api median={statistics.median(api_t) * 1000:7.1f} ms "
                    f"ratio={ratio:.2f} (goal < 3)"
                )
        finally:
            runtime.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
