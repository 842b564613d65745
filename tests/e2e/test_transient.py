"""Transient failures end to end: an artifact server answering 503 makes the provider raise
TransientProviderError; the activity re-raises it and the runtime retries it (call_activity_with_retry)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from examples.demo import EXAMPLES
from tests.e2e.conftest import E2E

pytestmark = pytest.mark.slow

PAGE = (EXAMPLES / "www" / "index.html").read_bytes()


class Flaky(http.server.BaseHTTPRequestHandler):
    failures: dict[str, int] = {}

    def do_GET(self) -> None:
        left = self.failures.get(self.path, 0)
        if left != 0:
            self.failures[self.path] = left - 1
            self.send_response(503)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def flaky() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _with_page(e2e: E2E, url: str) -> dict[str, object]:
    template = e2e.template("busybox-webpage.json", distribute=[{"type": "VHD", "runOutputName": "vhd"}])
    template["properties"]["customize"][0]["sourceUri"] = url
    return template


def test_a_503_from_the_artifact_server_is_retried_and_the_run_succeeds(e2e: E2E, flaky: str) -> None:
    Flaky.failures["/once/index.html"] = 1
    final = e2e.build("bb-transient", _with_page(e2e, f"{flaky}/once/index.html"))
    assert final["runState"] == "Succeeded", final
    log = e2e.log_text("bb-transient")
    assert "transient failure, will be retried" in log and "HTTP 503" in log
    assert log.count("==> prepare (source and artifacts): started") == 2
    e2e.assert_no_leaks()


def test_a_server_that_keeps_failing_fails_the_run_after_the_retries(e2e: E2E, flaky: str) -> None:
    Flaky.failures["/always/index.html"] = -1  # never succeeds
    final = e2e.build("bb-transient-fails", _with_page(e2e, f"{flaky}/always/index.html"))
    assert final["runState"] == "Failed"
    assert "prepare (source and artifacts)" in final["message"] and "HTTP 503" in final["message"]
    assert "still failing after 3 attempts" in final["message"]
    log = e2e.log_text("bb-transient-fails")
    assert log.count("==> prepare (source and artifacts): started") == 3  # RetryOptions: 3 attempts
    assert "==> create build environment" not in log
    e2e.assert_no_leaks()
