"""Plain Functions patterns from the azure-functions-python-library docs and Azure-Samples apps, run
unchanged on `python -m local_runtime start`: HTTP (query, JSON body, route constraints, keys, `$return`
str, default route, errors), async functions with `func.Context`, func.Out queue/blob outputs, a queue
trigger with message metadata in a blob path, a blob trigger with `func.InputStream`, and a timer."""

from __future__ import annotations

import json
import re
from typing import Any

from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from local_runtime.azurite import connection_string
from tests.runtime.conftest import RuntimeProcess
from tests.runtime_conformance.conftest import http, poll


def storage(app: RuntimeProcess) -> str:
    m = app.wait_for_line(r"^Azurite ports: blob=(\d+) queue=(\d+) table=(\d+)$")
    return connection_string("127.0.0.1", int(m.group(1)), int(m.group(2)), int(m.group(3)))


def test_http_trigger_template(func_app: RuntimeProcess) -> None:
    url = func_app.url
    r = http("GET", f"{url}/api/hello?name=Ada")
    assert r.status == 200 and r.body == b"Hello, Ada. This HTTP triggered function executed successfully."
    assert r.headers["content-type"].startswith("text/plain")
    assert http("POST", f"{url}/api/hello", {"name": "Grace"}).body.startswith(b"Hello, Grace.")
    bare = http("POST", f"{url}/api/hello", raw=b"not json", headers={"Content-Type": "text/plain"})
    assert bare.status == 200 and bare.body.startswith(b"This HTTP triggered function executed successfully.")
    # route matching ignores case, as on the host
    assert http("GET", f"{url}/API/Hello?name=x").status == 200


def test_route_params_constraints_and_keys(func_app: RuntimeProcess) -> None:
    url = func_app.url
    code = func_app.keys["functionKeys"]["default"]
    assert http("GET", f"{url}/api/products/books/7").status == 401  # function level: a key is needed
    assert http("GET", f"{url}/api/products/books/7?code=wrong").status == 401
    master = func_app.keys["masterKey"]
    assert http("GET", f"{url}/api/products/books/7?code={master}").status == 200
    r = http("GET", f"{url}/api/products/books/7?code={code}&sort=asc")
    body = r.json()
    assert r.headers["content-type"].startswith("application/json")
    assert body["category"] == "books" and body["id"] == "7" and body["method"] == "GET"
    assert body["params"] == {"code": code, "sort": "asc"}
    assert body["url"].startswith(f"{url}/api/products/books/7?")
    assert http("GET", f"{url}/api/products/books?code={code}").json()["id"] is None
    assert http("GET", f"{url}/api/products/books/seven?code={code}").status == 404  # int constraint
    assert http("GET", f"{url}/api/products/b00ks/1?code={code}").status == 404  # alpha constraint
    assert http("POST", f"{url}/api/products/books/7?code={code}").status == 404  # method not allowed
    assert http("GET", f"{url}/api/products/books/7", headers={"x-functions-key": code}).status == 200


def test_async_function_with_context(func_app: RuntimeProcess) -> None:
    r = http("GET", f"{func_app.url}/api/whoami", headers={"User-Agent": "conformance/1"})
    body = r.json()
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", body["invocation_id"]
    )
    assert body["function_name"] == "whoami"
    assert body["function_directory"].rstrip("/").endswith("func_basics")
    assert body["user_agent"] == "conformance/1"
    assert http("GET", f"{func_app.url}/api/whoami").json()["invocation_id"] != body["invocation_id"]


def test_return_values_default_route_and_errors(func_app: RuntimeProcess) -> None:
    url = func_app.url
    r = http("POST", f"{url}/api/echo", raw=b"plain words", headers={"Content-Type": "text/plain"})
    assert r.status == 200 and r.body == b"plain words"
    assert r.headers["content-type"].startswith("text/plain")
    assert http("GET", f"{url}/api/default_route").status == 204
    boom = http("GET", f"{url}/api/boom")
    assert boom.status == 500 and b"secret" not in boom.body
    poll(lambda: "secret detail that must not leak" in func_app.output, 5, "the trace in the log")


def test_queue_output_then_queue_trigger_then_blob_output(func_app: RuntimeProcess) -> None:
    conn = storage(func_app)
    url = func_app.url
    code = func_app.keys["functionKeys"]["default"]
    r = http("POST", f"{url}/api/enqueue?code={code}", {"id": "order-17", "qty": 3})
    assert r.status == 201 and r.json() == {"queued": "order-17"}
    blobs = BlobServiceClient.from_connection_string(conn).get_container_client("conf-processed")

    def processed() -> list[str]:
        try:
            return [b.name for b in blobs.list_blobs()]
        except Exception:
            return []

    names = poll(processed, 20, "the queue trigger's blob output")
    # {id} names the JSON message's own property: on the host, payload properties override the
    # built-in binding data (Id, DequeueCount, ...) with the same name (QueueTriggerBinding)
    assert names == ["order-17.json"], names
    doc = json.loads(blobs.download_blob(names[0]).readall())
    assert doc["order"] == {"id": "order-17", "qty": 3}
    assert re.fullmatch(r"[0-9a-f-]{36}", doc["message_id"])
    assert doc["dequeue_count"] == 1 and doc["has_insertion_time"] is True


def test_blob_trigger_input_stream(func_app: RuntimeProcess) -> None:
    conn = storage(func_app)
    svc = BlobServiceClient.from_connection_string(conn)
    container = svc.get_container_client("conf-uploads")
    if not container.exists():
        container.create_container()
    container.upload_blob("docs/readme.txt", b"hello blob", overwrite=True)
    queue = QueueClient.from_connection_string(
        conn, "conf-blob-results", message_decode_policy=TextBase64DecodePolicy()
    )

    def result() -> dict[str, Any] | None:
        try:
            msgs = list(queue.receive_messages())
        except Exception:
            return None
        return json.loads(msgs[0].content) if msgs else None

    got = poll(result, 20, "the blob trigger's queue output")
    assert got["name"] == "conf-uploads/docs/readme.txt"
    assert got["length"] == len(b"hello blob") and got["content"] == "hello blob"
    assert got["uri"].endswith("/conf-uploads/docs/readme.txt")


def test_timer_runs_on_startup_and_on_schedule(func_app: RuntimeProcess) -> None:
    path = func_app.out_dir / "timer.jsonl"  # type: ignore[attr-defined]
    runs = poll(
        lambda: path.exists() and len(path.read_text().splitlines()) >= 2 and path.read_text(), 10, "2 runs"
    )
    assert all(json.loads(line)["past_due"] is False for line in runs.splitlines())


def test_blueprint_blob_input_catch_all_and_bytes(func_app: RuntimeProcess) -> None:
    url = func_app.url
    r = http("GET", f"{url}/api/bp/Lin")
    assert r.status == 200 and r.body == b"blueprint says hi to Lin" and r.headers["x-sample"] == "blueprint"

    conn = storage(func_app)
    container = BlobServiceClient.from_connection_string(conn).get_container_client("conf-uploads")
    if not container.exists():
        container.create_container()
    container.upload_blob("note.txt", b"from a blob input", overwrite=True)
    got = http("GET", f"{url}/api/file/note.txt")
    assert got.status == 200 and got.body == b"from a blob input"
    assert http("GET", f"{url}/api/file/missing.txt").status == 404  # a missing blob binds None

    deep = http("GET", f"{url}/api/files/a/b/c.txt?tag=x&tag=y").json()
    assert deep == {"path": "a/b/c.txt", "tags": "x,y"}
    png = http("GET", f"{url}/api/pixel")
    assert png.body == bytes([0x89, 0x50, 0x4E, 0x47]) and png.headers["content-type"] == "image/png"


def test_queue_triggered_durable_starter_on_a_function_app(func_app: RuntimeProcess) -> None:
    queue = QueueClient.from_connection_string(
        storage(func_app), "conf-start", message_encode_policy=TextBase64EncodePolicy()
    )
    poll(lambda: _queue_exists(queue), 10, "the trigger's queue")
    queue.send_message(json.dumps({"id": "order-88", "qty": 4}))
    code = (func_app.state_dir / "durabletask_extension.key").read_text().strip()
    status_url = f"{func_app.url}/runtime/webhooks/durabletask/instances/order-88?code={code}"
    status = poll(lambda: (r := http("GET", status_url)).status == 200 and r.json(), 20, "the orchestration")
    assert status["name"] == "order_orchestrator" and status["output"] == {"id": "order-88", "total": 10.0}


def _queue_exists(queue: QueueClient) -> bool:
    try:
        queue.get_queue_properties()
        return True
    except Exception:
        return False


def test_event_grid_webhook(func_app: RuntimeProcess) -> None:
    url = func_app.url
    key = (func_app.state_dir / "eventgrid_extension.key").read_text().strip()
    hook = f"{url}/runtime/webhooks/eventgrid?functionName=on_event&code={key}"
    assert f"on_event: eventGridTrigger {hook}" in func_app.output
    event = {
        "id": "e-1",
        "topic": "/subscriptions/s/resourceGroups/r/providers/Microsoft.Storage/storageAccounts/a",
        "subject": "/blobServices/default/containers/c/blobs/a.txt",
        "eventType": "Microsoft.Storage.BlobCreated",
        "eventTime": "2024-01-01T00:00:00.1234567Z",
        "data": {"url": "https://a.blob.core.windows.net/c/a.txt"},
        "dataVersion": "1",
    }
    validation = {
        **event,
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "data": {"validationCode": "CODE-42"},
    }
    r = http("POST", hook, [validation], headers={"aeg-event-type": "SubscriptionValidation"})
    assert r.status == 200 and r.json() == {"validationResponse": "CODE-42"}
    assert http("POST", hook, [event], headers={"aeg-event-type": "Notification"}).status == 202
    failing = {**event, "id": "e-2", "subject": "fail"}
    assert http("POST", hook, [failing], headers={"aeg-event-type": "Notification"}).status == 500
    assert (
        http("POST", hook.split("&code=")[0], [event], headers={"aeg-event-type": "Notification"}).status
        == 401
    )
    assert (
        http(
            "POST", hook.replace("on_event", "nope"), [event], headers={"aeg-event-type": "Notification"}
        ).status
        == 404
    )
    queue = QueueClient.from_connection_string(
        storage(func_app), "conf-events-seen", message_decode_policy=TextBase64DecodePolicy()
    )
    got = poll(
        lambda: [json.loads(m.content) for m in queue.receive_messages()], 10, "the event's queue output"
    )
    assert got == [
        {
            "id": "e-1",
            "data": event["data"],
            "topic": event["topic"],
            "subject": event["subject"],
            "event_type": "Microsoft.Storage.BlobCreated",
        }
    ]


def test_function_in_error_does_not_stop_the_others(func_app: RuntimeProcess) -> None:
    assert "The 'on_service_bus' function is in error" in func_app.output
    assert http("GET", f"{func_app.url}/api/hello?name=x").status == 200
