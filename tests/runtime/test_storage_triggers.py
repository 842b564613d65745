"""Blob and queue triggers, queue and blob outputs, retries and poison queues on a real host and Azurite."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from local_runtime.azurite import Azurite, start_azurite
from tests.runtime.conftest import RuntimeProcess, read_events, wait_until

pytestmark = pytest.mark.slow


def queue(az: Azurite, name: str) -> QueueClient:
    q = QueueClient.from_connection_string(
        az.connection_string,
        name,
        message_encode_policy=TextBase64EncodePolicy(),
        message_decode_policy=TextBase64DecodePolicy(),
    )
    try:
        q.create_queue()
    except Exception:
        pass
    return q


def drain(q: QueueClient) -> list[str]:
    try:
        return [m.content for m in q.receive_messages(max_messages=32)]
    except ResourceNotFoundError:
        return []


class StorageHost:
    """storage_app hosts over one private Azurite; `current` is the last started host."""

    def __init__(self, az: Azurite, tmp: Path) -> None:
        self.az = az
        self.events_file = tmp / "events.jsonl"
        self.env = {"RUNTIME_TEST_EVENTS": str(self.events_file), "AzureWebJobsStorage": az.connection_string}
        self.state = tmp / "state"
        self.blobs = BlobServiceClient.from_connection_string(az.connection_string)
        self.started: list[RuntimeProcess] = []

    def start(self, **extra_env: str) -> RuntimeProcess:
        rp = RuntimeProcess("storage_app", self.state, {**self.env, **extra_env})
        self.started.append(rp)
        rp.wait_ready()
        return rp

    @property
    def current(self) -> RuntimeProcess:
        return self.started[-1]

    def stop_all(self) -> None:
        for rp in self.started:  # hosts stop before their Azurite does
            rp.stop()

    def events(self, fn: str) -> list[dict[str, Any]]:
        return [e for e in read_events(self.events_file) if e["fn"] == fn]

    def upload(self, container: str, name: str, data: bytes) -> None:
        cc = self.blobs.get_container_client(container)
        if not cc.exists():
            cc.create_container()
        cc.upload_blob(name, data, overwrite=True)


@pytest.fixture
def storage_host(tmp_path: Path) -> Iterator[StorageHost]:
    """A fresh Azurite and state dir (for restart tests)."""
    with start_azurite(tmp_path / "azurite") as az:
        h = StorageHost(az, tmp_path)
        try:
            yield h
        finally:
            h.stop_all()


@pytest.fixture(scope="module")
def shared_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageHost]:
    """One host and Azurite for the tests that use distinct queues and containers (saves startups).

    The running-message lease is 2 s so that a 3 s function needs its lease renewed."""
    tmp = tmp_path_factory.mktemp("shared-storage")
    with start_azurite(tmp / "azurite") as az:
        h = StorageHost(az, tmp)
        try:
            h.start(LOCAL_RUNTIME_QUEUE_LEASE_SECONDS="2")
            yield h
        finally:
            h.stop_all()


def test_blob_trigger_once_per_version_across_restarts(storage_host: StorageHost) -> None:
    h = storage_host
    host = h.start()
    h.upload("samples", "a.json", b'{"v": 1}')
    h.upload("samples", "notes.txt", b"not matching the pattern")
    ev = wait_until(lambda: h.events("on_sample"), what="blob trigger")
    assert ev[0]["name"] == "samples/a.json"
    assert ev[0]["length"] == 8 and ev[0]["data"] == '{"v": 1}'
    assert ev[0]["uri"].endswith("/samples/a.json")
    out = queue(h.az, "blob-events")
    msgs = wait_until(lambda: drain(out), what="queue output message")
    assert json.loads(msgs[0]) == {"blob": "samples/a.json", "size": 8}

    h.upload("samples", "a.json", b'{"v": 2}')  # a new version (ETag) fires again
    wait_until(lambda: len(h.events("on_sample")) == 2, what="second version")
    assert h.events("on_sample")[1]["data"] == '{"v": 2}'
    assert host.stop() == 0

    host = h.start()
    h.upload("samples", "sub/b.json", b"{}")  # {name} spans folders, as on the host
    wait_until(lambda: len(h.events("on_sample")) == 3, what="blob after restart")
    time.sleep(2.5)  # several more scans: nothing already received fires again
    names = [e["name"] for e in h.events("on_sample")]
    assert names == ["samples/a.json", "samples/a.json", "samples/sub/b.json"]
    receipts = json.loads((h.state / "blob_receipts" / "on_sample.json").read_text())
    assert receipts["a.json"]["status"] == "done"


def test_blob_trigger_retries_then_poison(shared_host: StorageHost) -> None:
    h = shared_host
    h.upload("failing", "x.bin", b"12345")
    poison = queue(h.az, "webjobs-blobtrigger-poison")
    msgs = wait_until(lambda: drain(poison), what="blob poison message")
    body = json.loads(msgs[0])
    assert body["FunctionId"] == "Host.Functions.on_failing"
    assert (body["ContainerName"], body["BlobName"], body["Type"]) == ("failing", "x.bin", "BlobTrigger")
    assert [e["size"] for e in h.events("on_failing")] == [5, 5]  # maxDequeueCount = 2 in host.json
    time.sleep(1.5)
    assert len(h.events("on_failing")) == 2  # poisoned blobs are not retried


def test_queue_trigger_outputs_and_poison(shared_host: StorageHost) -> None:
    h = shared_host
    host = h.current
    queue(h.az, "orders").send_message(json.dumps({"id": "o1", "qty": 3}))
    queue(h.az, "bad").send_message("payload")
    ev = wait_until(lambda: h.events("on_order"), what="queue trigger")
    assert ev[0]["dequeue_count"] == 1 and ev[0]["order"] == {"id": "o1", "qty": 3} and ev[0]["inserted"]
    done = wait_until(lambda: drain(queue(h.az, "orders-done")), what="$return queue output")
    assert json.loads(done[0]) == {"done": "o1"}
    receipt = h.blobs.get_blob_client("receipts", "o1.txt")  # {id} from the JSON message body
    # Outputs of one invocation are written one after another: the queue message may be visible first.
    wait_until(receipt.exists, what="blob output")
    assert receipt.download_blob().readall() == b"order o1 for 3"

    h.upload("inputs", "doc1.txt", b"document one")
    queue(h.az, "lookups").send_message(json.dumps({"name": "doc1.txt"}))
    queue(h.az, "lookups").send_message(json.dumps({"name": "missing.txt"}))
    found = wait_until(lambda: len(h.events("on_lookup")) == 2 and h.events("on_lookup"), what="blob input")
    assert {e["name"]: e["doc"] for e in found} == {"doc1.txt": "document one", "missing.txt": None}

    poisoned = wait_until(lambda: drain(queue(h.az, "bad-poison")), what="poison queue")
    assert poisoned == ["payload"]
    assert [e["dequeue_count"] for e in h.events("on_bad")] == [1, 2]
    assert drain(queue(h.az, "bad")) == []
    host.wait_for_line(r"Moving message to queue 'bad-poison'")

    queue(h.az, "returns").send_message("x")  # a return value with no $return binding fails, as in the worker
    wait_until(lambda: drain(queue(h.az, "returns-poison")), what="returns-poison")
    host.wait_for_line(r"without a \$return binding returned a non-None value")


def test_queue_trigger_str_annotation_and_encoding_errors(shared_host: StorageHost) -> None:
    h = shared_host
    host = h.current
    queue(h.az, "plain").send_message("héllo")
    assert wait_until(lambda: h.events("on_plain"), what="plain message")[0]["text"] == "héllo"
    raw = QueueClient.from_connection_string(h.az.connection_string, "plain")
    raw.send_message("not base64 !!!")  # host.json says base64: it fails, then goes to poison
    poison = QueueClient.from_connection_string(h.az.connection_string, "plain-poison")
    assert wait_until(lambda: drain(poison), what="undecodable message") == ["not base64 !!!"]
    host.wait_for_line(r"is not valid base64")


def test_queue_lease_is_renewed_and_messages_run_concurrently(shared_host: StorageHost) -> None:
    h = shared_host  # lease 2 s; each run takes 3 s
    q = queue(h.az, "slow")
    for i in range(3):
        q.send_message(f"m{i}")
    wait_until(
        lambda: len([e for e in h.events("on_slow") if e["phase"] == "end"]) == 3, what="slow messages"
    )
    time.sleep(1.5)
    starts = [e for e in h.events("on_slow") if e["phase"] == "start"]
    assert sorted(e["body"] for e in starts) == ["m0", "m1", "m2"]  # none ran twice: the lease was renewed
    assert all(e["dequeue_count"] == 1 for e in starts)
    ends = [e for e in h.events("on_slow") if e["phase"] == "end"]
    assert max(e["t"] for e in starts) < min(e["t"] for e in ends)  # one batch, run concurrently
    assert drain(q) == []
