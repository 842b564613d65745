"""Sample storage app for the local runtime tests: blob triggers with binding expressions, queue triggers,
queue and blob output bindings, and functions that always fail (for retries and poison queues). Each
invocation appends a JSON line to $RUNTIME_TEST_EVENTS."""

import json
import os
import time

import azure.functions as func

app = func.FunctionApp()


def record(**event: object) -> None:
    with open(os.environ["RUNTIME_TEST_EVENTS"], "a") as f:
        f.write(json.dumps({"t": time.time(), **event}) + "\n")


@app.blob_trigger(arg_name="blob", path="samples/{name}.json", connection="AzureWebJobsStorage")
@app.queue_output(arg_name="out", queue_name="blob-events", connection="AzureWebJobsStorage")
def on_sample(blob: func.InputStream, out: func.Out[str]) -> None:
    data = blob.read()
    record(fn="on_sample", name=blob.name, length=blob.length, uri=blob.uri, data=data.decode())
    out.set(json.dumps({"blob": blob.name, "size": len(data)}))


@app.blob_trigger(arg_name="blob", path="failing/{name}", connection="AzureWebJobsStorage")
def on_failing(blob: bytes) -> None:
    record(fn="on_failing", size=len(blob))
    raise ValueError("this blob always fails")


@app.queue_trigger(arg_name="msg", queue_name="orders", connection="AzureWebJobsStorage")
@app.blob_output(arg_name="receipt", path="receipts/{id}.txt", connection="AzureWebJobsStorage")
@app.queue_output(arg_name="$return", queue_name="orders-done", connection="AzureWebJobsStorage")
def on_order(msg: func.QueueMessage, receipt: func.Out[str]) -> str:
    order = msg.get_json()
    record(
        fn="on_order",
        id=msg.id,
        dequeue_count=msg.dequeue_count,
        order=order,
        inserted=msg.insertion_time.isoformat() if msg.insertion_time else None,
    )
    receipt.set(f"order {order['id']} for {order['qty']}")
    return json.dumps({"done": order["id"]})


@app.queue_trigger(arg_name="msg", queue_name="bad", connection="AzureWebJobsStorage")
async def on_bad(msg: func.QueueMessage) -> None:
    record(fn="on_bad", dequeue_count=msg.dequeue_count, body=msg.get_body().decode())
    raise RuntimeError("always fails")


@app.queue_trigger(arg_name="text", queue_name="plain", connection="AzureWebJobsStorage")
def on_plain(text: str) -> None:
    record(fn="on_plain", text=text)


@app.queue_trigger(arg_name="msg", queue_name="lookups", connection="AzureWebJobsStorage")
@app.blob_input(arg_name="doc", path="inputs/{name}", connection="AzureWebJobsStorage")
def on_lookup(msg: func.QueueMessage, doc: str | None) -> None:
    record(fn="on_lookup", name=msg.get_json()["name"], doc=doc)


@app.queue_trigger(arg_name="msg", queue_name="slow", connection="AzureWebJobsStorage")
async def on_slow(msg: func.QueueMessage) -> None:
    import asyncio

    record(fn="on_slow", phase="start", body=msg.get_body().decode(), dequeue_count=msg.dequeue_count)
    await asyncio.sleep(3)
    record(fn="on_slow", phase="end", body=msg.get_body().decode())


@app.queue_trigger(arg_name="msg", queue_name="returns", connection="AzureWebJobsStorage")
def returns_without_binding(msg: func.QueueMessage) -> str:
    record(fn="returns_without_binding", dequeue_count=msg.dequeue_count)
    return "nowhere to go"
