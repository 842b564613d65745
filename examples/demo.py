"""The demo (`make demo`): start the local runtime on this repository's function_app.py, submit
examples/templates/debian12-webserver.json through the ARM REST API, run it, show each phase as it
happens, print the run outputs and where the VHD is, then stop the runtime.

Also the small clients the end-to-end tests and the benchmark reuse: `LocalRuntime` (the
`python -m local_runtime start` subprocess) and `ImageBuilderApi` (the REST calls, with the function key).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python examples/demo.py` from anywhere: the runtime helper is in the repo
    sys.path.insert(0, str(ROOT))

from local_runtime.process import LISTENING, HostProcess, HostProcessError  # noqa: E402

EXAMPLES = ROOT / "examples"
API_VERSION = "2025-10-01"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "imagebuilder-demo"
TERMINAL = ("Succeeded", "PartiallySucceeded", "Failed", "Canceled")


class DemoError(Exception):
    """Something the demo needs did not work; the message says what and what to do."""


# ---------------------------------------------------------------------------------------------- runtime
class LocalRuntime(HostProcess):
    """This repository's app on the local runtime (`local_runtime.process.HostProcess`): its own process
    group (stop() reaches Azurite and sandboxes too), output also in `state_dir/runtime.log`."""

    def __init__(
        self,
        state_dir: Path,
        env: dict[str, str] | None = None,
        app_dir: Path = ROOT,
        log_path: Path | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        # host.json names the task hub through this app setting (as it is set on Azure)
        hub = os.environ.get("IMAGEBUILDER_TASK_HUB", "ImageBuilderHub")
        super().__init__(
            app_dir,
            state_dir,
            env={"IMAGEBUILDER_TASK_HUB": hub, **(env or {})},
            args=extra_args or [],
            log_path=log_path or state_dir / "runtime.log",
            new_session=True,
        )

    def start(self, *, wait: str | None = LISTENING, timeout: float = 120.0) -> LocalRuntime:
        try:
            super().start(wait=wait, timeout=timeout)
        except HostProcessError:
            raise DemoError(
                f"the local runtime did not start (see {self.log_path}):\n{self.tail()}"
            ) from None
        return self

    @property
    def base_url(self) -> str:
        return self.url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self.url = value


# ------------------------------------------------------------------------------------------ REST client
@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class ImageBuilderApi:
    """The Microsoft.VirtualMachineImages REST calls the demo and tests make (function key in a header)."""

    base_url: str
    key: str
    subscription: str = SUBSCRIPTION
    resource_group: str = RESOURCE_GROUP

    def template_path(self, name: str) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.VirtualMachineImages/imageTemplates/{name}"
        )

    def request(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> Response:
        url = path if path.startswith("http") else self.base_url + path
        if "api-version=" not in url:
            url += ("&" if "?" in url else "?") + f"api-version={API_VERSION}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("x-functions-key", self.key)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status, headers = resp.status, dict(resp.headers.items())
        except urllib.error.HTTPError as err:
            raw, status, headers = err.read(), err.code, dict(err.headers.items())
        text = raw.decode(errors="replace")
        try:
            parsed: Any = json.loads(text) if text else None
        except json.JSONDecodeError:
            parsed = text
        return Response(status, headers, parsed)

    def expect(self, resp: Response, *codes: int, what: str) -> Response:
        if resp.status not in codes:
            raise DemoError(f"{what}: HTTP {resp.status}: {json.dumps(resp.body)[:2000]}")
        return resp

    def wait_operation(self, resp: Response, what: str, timeout: float = 300.0) -> dict[str, Any]:
        """Follow ARM's Azure-AsyncOperation (or Location) header until the operation is done."""
        headers = {k.lower(): v for k, v in resp.headers.items()}
        url = headers.get("azure-asyncoperation") or headers.get("location")
        if resp.status not in (201, 202) or not url:
            return resp.body if isinstance(resp.body, dict) else {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            op = self.request("GET", url)
            body = op.body if isinstance(op.body, dict) else {}
            status = str(body.get("status") or body.get("properties", {}).get("provisioningState") or "")
            if op.status == 200 and status in ("Succeeded", "Failed", "Canceled"):
                if status != "Succeeded":
                    raise DemoError(f"{what}: operation {status}: {json.dumps(body)[:2000]}")
                return body
            time.sleep(0.5)
        raise DemoError(f"{what}: operation still running after {timeout:.0f}s")

    def put_template(self, name: str, template: dict[str, Any]) -> dict[str, Any]:
        resp = self.expect(
            self.request("PUT", self.template_path(name), template), 200, 201, 202, what=f"PUT {name}"
        )
        self.wait_operation(resp, f"creating template {name}")
        return self.get_template(name)

    def get_template(self, name: str) -> dict[str, Any]:
        body = self.expect(self.request("GET", self.template_path(name)), 200, what=f"GET {name}").body
        assert isinstance(body, dict)
        return body

    def delete_template(self, name: str) -> None:
        resp = self.request("DELETE", self.template_path(name))
        if resp.status in (200, 202, 204):
            self.wait_operation(resp, f"deleting template {name}", timeout=600)

    def run(self, name: str) -> Response:
        resp = self.request("POST", self.template_path(name) + "/run")
        return self.expect(resp, 200, 202, what=f"run {name}")

    def cancel(self, name: str) -> Response:
        return self.expect(
            self.request("POST", self.template_path(name) + "/cancel"), 200, 202, what=f"cancel {name}"
        )

    def last_run_status(self, name: str) -> dict[str, Any]:
        return dict(self.get_template(name).get("properties", {}).get("lastRunStatus") or {})

    def run_outputs(self, name: str) -> list[dict[str, Any]]:
        body = self.expect(
            self.request("GET", self.template_path(name) + "/runOutputs"), 200, what=f"runOutputs of {name}"
        ).body
        return list((body or {}).get("value", []))

    def runs(self, name: str) -> list[dict[str, Any]]:
        """Our extension: every run of the template (oldest first) with details and log locations."""
        body = self.expect(self.request("GET", self.template_path(name) + "/runs"), 200, what="runs").body
        return list((body or {}).get("value", []))

    def watch(
        self, name: str, *, timeout: float = 3600.0, interval: float = 1.0, on_change: Any = None
    ) -> dict[str, Any]:
        """Poll lastRunStatus until the run is terminal; `on_change(status)` sees every new sub-state."""
        deadline = time.monotonic() + timeout
        last: tuple[Any, ...] = ()
        while time.monotonic() < deadline:
            status = self.last_run_status(name)
            now = (status.get("runState"), status.get("runSubState"))
            if now != last and on_change is not None:
                on_change(status)
            last = now
            if status.get("runState") in TERMINAL:
                return status
            time.sleep(interval)
        raise DemoError(f"run of {name} not finished after {timeout:.0f}s")


# ------------------------------------------------------------------------------------- example files
@contextlib.contextmanager
def serve_examples() -> Iterator[str]:
    """Serve examples/ over HTTP on a free port (templates fetch their files from `${EXAMPLES_URL}`)."""
    handler = functools.partial(_QuietHandler, directory=str(EXAMPLES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


def load_template(path: Path, examples_url: str) -> dict[str, Any]:
    """A template file with `${EXAMPLES_URL}` replaced by where examples/ is served."""
    data: dict[str, Any] = json.loads(path.read_text().replace("${EXAMPLES_URL}", examples_url))
    return data


# ---------------------------------------------------------------------------------------------- demo
def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(template_path: Path, state_dir: Path, name: str) -> int:
    env = {
        "IMAGEBUILDER_PROVIDER": os.environ.get("IMAGEBUILDER_PROVIDER", "local"),
        "AzureWebJobsStorage": os.environ.get("AzureWebJobsStorage", "UseDevelopmentStorage=true"),  # noqa: SIM112
        # the provider's state (runs, image store, gallery, VHDs) and the base image cache (shared with
        # the end-to-end tests), kept between demos
        "IMAGEBUILDER_STATE_DIR": os.environ.get("IMAGEBUILDER_STATE_DIR", str(ROOT / ".state" / "provider")),
        "IMAGEBUILDER_CACHE_DIR": os.environ.get("IMAGEBUILDER_CACHE_DIR", str(ROOT / ".state" / "cache")),
    }
    # with development storage, the runtime starts its own Azurite on free ports (data in its state dir)
    private = ["--private-storage"] if env["AzureWebJobsStorage"] == "UseDevelopmentStorage=true" else []
    runtime = LocalRuntime(state_dir=state_dir, env=env, extra_args=private)
    _say(f"== starting the local runtime (state in {state_dir})")
    runtime.start()
    started = time.monotonic()
    try:
        api = ImageBuilderApi(runtime.base_url, runtime.key)
        _say(f"   listening on {runtime.base_url}")
        with serve_examples() as examples_url:
            template = load_template(template_path, examples_url)
            if api.request("GET", api.template_path(name)).status == 200:
                _say(f"== DELETE the previous {name} (AIB does not update image templates in place)")
                api.delete_template(name)
            _say(f"== PUT {api.template_path(name)}  ({template_path.relative_to(ROOT)})")
            api.put_template(name, template)
            _say(f"== POST .../{name}/run")
            run_started = time.monotonic()
            api.run(name)

            def show(status: dict[str, Any]) -> None:
                elapsed = time.monotonic() - run_started
                sub = status.get("runSubState") or "-"
                first = (str(status.get("message") or "").splitlines() or [""])[0]
                _say(f"   [{elapsed:7.1f}s] {status.get('runState'):<18} {sub:<13} {first}")

            try:
                final = api.watch(name, on_change=show, interval=0.25)
            except KeyboardInterrupt:
                _say("   interrupted: canceling the run (cleanup runs before it ends)")
                api.cancel(name)
                final = api.watch(name, on_change=show, timeout=600)
        _say(f"== run finished: {final.get('runState')} in {time.monotonic() - run_started:.1f}s")
        _say("   " + str(final.get("message") or "").replace("\n", "\n   "))
        runs = api.runs(name)
        last = runs[-1]["properties"] if runs else {}
        phases = (last.get("details") or {}).get("phases") or {}
        if phases:
            _say("== time per phase (wall / the phase activities' own work)")
        for phase, p in phases.items():
            wall, work = float(p.get("seconds") or 0), float(p.get("workSeconds") or 0)
            _say(f"   {phase:<13} {wall:7.1f}s / {work:7.1f}s")
        log_url = (last.get("logs") or {}).get("customization.log")
        if log_url:
            _say(f"== customization log: {log_url}  (function key in x-functions-key)")
        outputs = api.run_outputs(name)
        if outputs:
            _say("== run outputs")
        for out in outputs:
            props = out.get("properties", {})
            _say(f"   {out.get('name')}: {props.get('provisioningState')}")
            if props.get("artifactId"):
                _say(f"      artifactId:  {props['artifactId']}")
            if props.get("artifactUri"):
                _say(f"      artifactUri: {props['artifactUri']}")
            for region in props.get("regions") or []:
                _say(f"      region {region.get('region')}: {region.get('status')}")
            uri = str(props.get("artifactUri") or "")
            if uri.startswith("file://") and uri.lower().endswith(".vhd"):
                path = Path(urllib.request.url2pathname(uri[len("file://") :]))
                if path.exists():
                    _say(f"      the VHD is at {path} ({path.stat().st_size / 2**20:.0f} MiB)")
        return 0 if final.get("runState") in ("Succeeded", "PartiallySucceeded") else 1
    finally:
        runtime.stop()  # first: printing can fail (a closed pipe) and must not leave the runtime behind
        with contextlib.suppress(OSError):
            _say(f"== stopped the local runtime (ran {time.monotonic() - started:.0f}s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--template", type=Path, default=EXAMPLES / "templates" / "debian12-webserver.json")
    parser.add_argument("--name", default="debian12-webserver")
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".state" / "demo")
    args = parser.parse_args(argv)
    try:
        return run_demo(args.template.resolve(), args.state_dir.resolve(), args.name)
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
