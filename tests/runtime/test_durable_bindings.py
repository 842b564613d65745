"""The durable client binding through the host: HTTP, queue and timer functions start orchestrations that the
durable engine (local_runtime.durable) runs; the check-status response points at this host."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from local_runtime.azurite import Azurite
from tests.runtime.conftest import RuntimeProcess, wait_until

pytestmark = pytest.mark.slow

BLOCK_DURABLE = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "local_runtime.durable":
            raise ImportError("local_runtime.durable hidden by the test")
sys.meta_path.insert(0, _Block())
"""


def test_without_the_durable_engine_the_host_still_starts(
    runtime: Callable[..., RuntimeProcess], azurite: Azurite, tmp_path: Path
) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(BLOCK_DURABLE)
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "RUNTIME_TEST_EVENTS": str(tmp_path / "ev.jsonl"),
        "PYTHONPATH": str(shim),
    }
    rp = runtime("durable_app", tmp_path / "state", env)
    rp.wait_for_line(r"the app has Durable Functions but local_runtime.durable is not available")
    r = requests.post(f"{rp.url}/api/start/Ann", timeout=10)
    assert r.status_code == 500  # the durable client binding cannot be served
    rp.wait_for_line(r"durableClient binding but the durable engine .* is not available")


def test_durable_client_in_http_queue_and_timer_functions(
    runtime: Callable[..., RuntimeProcess], azurite: Azurite, tmp_path: Path
) -> None:
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "RUNTIME_TEST_EVENTS": str(tmp_path / "ev.jsonl"),
    }
    rp = runtime("durable_app", tmp_path / "state", env)

    r = requests.post(f"{rp.url}/api/start/Ann", timeout=10)
    assert r.status_code == 202
    status_url = r.json()["statusQueryGetUri"]
    assert status_url.startswith(f"{rp.url}/runtime/webhooks/durabletask/instances/")
    done = wait_until(lambda: requests.get(status_url, timeout=10).json()["runtimeStatus"] == "Completed")
    assert done
    assert requests.get(status_url, timeout=10).json()["output"] == "Hello Ann!"

    q = QueueClient.from_connection_string(
        azurite.connection_string, "start-requests", message_encode_policy=TextBase64EncodePolicy()
    )
    try:
        q.create_queue()
    except Exception:
        pass
    q.send_message(json.dumps({"id": "from-queue", "name": "Queue"}))
    base = status_url.split("/instances/")[0]
    code = status_url.split("code=")[1]

    def output(instance: str) -> object:
        resp = requests.get(f"{base}/instances/{instance}?code={code}", timeout=10)
        return resp.status_code == 200 and resp.json().get("output")

    assert wait_until(lambda: output("from-queue"), what="queue-started orchestration") == "Hello Queue!"
    assert wait_until(lambda: output("from-timer"), what="timer-started orchestration") == "Hello timer!"
