"""The REST client of `aib`: ARM paths of `Microsoft.VirtualMachineImages`, the function key in
`x-functions-key`, long-running operations followed through `Azure-AsyncOperation`, and ARM error bodies
raised as `ApiError` (code, target, message, HTTP status)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests

API_VERSION = "2025-10-01"
PROVIDER = "Microsoft.VirtualMachineImages"
TERMINAL = ("Succeeded", "PartiallySucceeded", "Failed", "Canceled")
RUN_ID_HEADER = "x-ms-imagebuilder-run-id"


class ApiError(Exception):
    """An ARM error answer (or no answer at all: status 0)."""

    def __init__(self, status: int, code: str, message: str, target: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (target: {target})" if target else ""))
        self.status = status
        self.code = code
        self.message = message
        self.target = target


@dataclass
class Client:
    endpoint: str
    key: str
    subscription: str
    timeout: float = 60.0
    session: requests.Session = field(default_factory=requests.Session)

    # ---- paths ------------------------------------------------------------------------------------
    def templates_path(self, rg: str | None) -> str:
        sub = f"/subscriptions/{quote(self.subscription, safe='')}"
        rg_part = f"/resourceGroups/{quote(rg, safe='')}" if rg else ""
        return f"{sub}{rg_part}/providers/{PROVIDER}/imageTemplates"

    def template_path(self, rg: str, name: str) -> str:
        return f"{self.templates_path(rg)}/{quote(name, safe='')}"

    # ---- transport --------------------------------------------------------------------------------
    def request(
        self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201, 202, 204)
    ) -> requests.Response:
        url = path if path.startswith("http") else self.endpoint + path
        params = None if "api-version=" in url else {"api-version": API_VERSION}
        try:
            resp = self.session.request(
                method,
                url,
                params=params,
                json=body,
                headers={"x-functions-key": self.key},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise ApiError(0, "ConnectionFailed", f"{method} {self.endpoint}: {exc}") from None
        if resp.status_code not in ok:
            raise _error(resp)
        return resp

    def json(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.request(method, path, body)
        return resp.json() if resp.content else None

    def list_all(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        url: str | None = path
        while url:
            page = self.json("GET", url) or {}
            items.extend(page.get("value") or [])
            url = page.get("nextLink")
        return items

    def wait_operation(self, resp: requests.Response, *, timeout: float = 3600.0) -> dict[str, Any]:
        """Poll `Azure-AsyncOperation` of a 201/202 until it ends; returns its status body."""
        op_url = resp.headers.get("Azure-AsyncOperation")
        if not op_url:
            return {"status": "Succeeded"}
        deadline = time.monotonic() + timeout
        while True:
            status = self.json("GET", op_url) or {}
            if status.get("status") in ("Succeeded", "Failed", "Canceled"):
                return dict(status)
            if time.monotonic() > deadline:
                raise ApiError(0, "Timeout", f"the operation {op_url} did not finish in {timeout:.0f} s")
            time.sleep(min(2.0, float(resp.headers.get("Retry-After") or 1)))

    # ---- templates --------------------------------------------------------------------------------
    def put_template(self, rg: str, name: str, body: dict[str, Any]) -> requests.Response:
        return self.request("PUT", self.template_path(rg, name), body)

    def get_template(self, rg: str, name: str) -> dict[str, Any]:
        return dict(self.json("GET", self.template_path(rg, name)))

    def runs(self, rg: str, name: str) -> list[dict[str, Any]]:
        return self.list_all(self.template_path(rg, name) + "/runs")

    def run(self, rg: str, name: str, path: str) -> dict[str, Any]:
        return dict(self.json("GET", f"{self.template_path(rg, name)}/runs/{quote(path, safe='')}"))

    def log(self, rg: str, name: str, run_id: str, log: str = "customization.log") -> str:
        path = f"{self.template_path(rg, name)}/runs/{quote(run_id, safe='')}/logs/{quote(log, safe='')}"
        return self.request("GET", path).text

    def start_run(self, rg: str, name: str, body: dict[str, Any] | None) -> requests.Response:
        return self.request("POST", self.template_path(rg, name) + "/run", body)


def _error(resp: requests.Response) -> ApiError:
    try:
        err = (resp.json() or {}).get("error") or {}
    except ValueError:
        err = {}
    code = str(err.get("code") or f"HTTP{resp.status_code}")
    message = str(err.get("message") or resp.text[:500] or resp.reason)
    details = err.get("details") or []
    if details:
        message += "".join(
            f"\n  - {d.get('code')}: {d.get('message')}"
            + (f" (target: {d['target']})" if d.get("target") else "")
            for d in details
            if isinstance(d, dict)
        )
    return ApiError(resp.status_code, code, message, err.get("target"))
