"""Plain Functions patterns as the azure-functions-python-library docs and the Azure-Samples apps write
them: HTTP with query/body/route parameters, async functions with func.Context, func.Out queue and blob
outputs, a queue trigger, a blob trigger reading an InputStream, and a timer."""

import datetime
import json
import logging
import os

import azure.functions as func
from http_blueprint import bp

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(bp)


@app.function_name(name="HttpTrigger1")
@app.route(route="hello", auth_level=func.AuthLevel.ANONYMOUS)
def test_function(req: func.HttpRequest) -> func.HttpResponse:
    logging.info("Python HTTP trigger function processed a request.")
    name = req.params.get("name")
    if not name:
        try:
            req_body = req.get_json()
        except ValueError:
            pass
        else:
            name = req_body.get("name")
    if name:
        greeting = os.environ.get("GREETING", "Hi")
        return func.HttpResponse(f"{greeting}, {name}. This HTTP triggered function executed successfully.")
    return func.HttpResponse(
        "This HTTP triggered function executed successfully. Pass a name in the query string or in the "
        "request body for a personalized response.",
        status_code=200,
    )


@app.route(route="products/{category:alpha}/{id:int?}", methods=[func.HttpMethod.GET])
def products(req: func.HttpRequest) -> func.HttpResponse:
    body = {
        "category": req.route_params.get("category"),
        "id": req.route_params.get("id"),
        "params": dict(req.params),
        "method": req.method,
        "url": req.url,
    }
    return func.HttpResponse(json.dumps(body), mimetype="application/json", status_code=200)


@app.route(route="whoami", auth_level=func.AuthLevel.ANONYMOUS)
async def whoami(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(
            {
                "invocation_id": context.invocation_id,
                "function_name": context.function_name,
                "function_directory": context.function_directory,
                "user_agent": req.headers.get("User-Agent"),
            }
        ),
        mimetype="application/json",
    )


@app.route(route="echo", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def echo(req: func.HttpRequest) -> str:
    return req.get_body().decode()


@app.route(auth_level=func.AuthLevel.ANONYMOUS)
def default_route(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(status_code=204)


@app.route(route="boom", auth_level=func.AuthLevel.ANONYMOUS)
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("secret detail that must not leak")


@app.route(route="enqueue", methods=["POST"])
@app.queue_output(arg_name="msg", queue_name="conf-orders", connection="AzureWebJobsStorage")
def enqueue(req: func.HttpRequest, msg: func.Out[str]) -> func.HttpResponse:
    order = req.get_json()
    msg.set(json.dumps(order))
    return func.HttpResponse(
        json.dumps({"queued": order["id"]}), status_code=201, mimetype="application/json"
    )


@app.queue_trigger(arg_name="azqueue", queue_name="conf-orders", connection="AzureWebJobsStorage")
@app.blob_output(arg_name="outputblob", path="conf-processed/{id}.json", connection="AzureWebJobsStorage")
def process_order(azqueue: func.QueueMessage, outputblob: func.Out[str]) -> None:
    order = azqueue.get_json()
    logging.info("Python Queue trigger processed a message: %s", azqueue.get_body().decode("utf-8"))
    outputblob.set(
        json.dumps(
            {
                "order": order,
                "message_id": azqueue.id,
                "dequeue_count": azqueue.dequeue_count,
                "has_insertion_time": isinstance(azqueue.insertion_time, datetime.datetime),
            }
        )
    )


@app.blob_trigger(arg_name="myblob", path="conf-uploads/{name}", connection="AzureWebJobsStorage")
@app.queue_output(arg_name="result", queue_name="conf-blob-results", connection="AzureWebJobsStorage")
def on_upload(myblob: func.InputStream, result: func.Out[str]) -> None:
    logging.info(
        f"Python blob trigger function processed blob Name: {myblob.name} Blob Size: {myblob.length} bytes"
    )
    result.set(
        json.dumps(
            {
                "name": myblob.name,
                "length": myblob.length,
                "uri": myblob.uri,
                "content": myblob.read().decode(),
            }
        )
    )


@app.timer_trigger(schedule="%TIMER_SCHEDULE%", arg_name="myTimer", run_on_startup=True, use_monitor=False)
def timer_trigger(myTimer: func.TimerRequest) -> None:
    if myTimer.past_due:
        logging.info("The timer is past due!")
    out = os.environ.get("CONFORMANCE_OUT")
    if out:
        with open(os.path.join(out, "timer.jsonl"), "a") as f:
            f.write(json.dumps({"past_due": myTimer.past_due}) + "\n")
    logging.info("Python timer trigger function executed.")


@app.function_name(name="BlobInput1")
@app.route(route="file/{name}", auth_level=func.AuthLevel.ANONYMOUS)
@app.blob_input(arg_name="inputblob", path="conf-uploads/{name}", connection="AzureWebJobsStorage")
def read_file(req: func.HttpRequest, inputblob: str) -> func.HttpResponse:
    if inputblob is None:
        return func.HttpResponse("no such file", status_code=404)
    logging.info(f"Python HTTP trigger read {len(inputblob)} characters")
    return func.HttpResponse(inputblob, mimetype="text/plain")


@app.route(route="files/{*path}", auth_level=func.AuthLevel.ANONYMOUS)
def catch_all(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps({"path": req.route_params.get("path"), "tags": req.params.get("tag")}),
        mimetype="application/json",
    )


@app.route(route="pixel", auth_level=func.AuthLevel.ANONYMOUS)
def pixel(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(body=bytes([0x89, 0x50, 0x4E, 0x47]), mimetype="image/png")


# Durable Functions through func.FunctionApp (its durable decorators delegate to azure-functions-durable),
# started from a queue message
@app.queue_trigger(arg_name="msg", queue_name="conf-start", connection="AzureWebJobsStorage")
@app.durable_client_input(client_name="client")
async def queue_start(msg: func.QueueMessage, client) -> None:
    order = msg.get_json()
    instance_id = await client.start_new("order_orchestrator", order["id"], order)
    logging.info(f"Started orchestration with ID = '{instance_id}'.")


@app.orchestration_trigger(context_name="context")
def order_orchestrator(context):
    order = context.get_input()
    total = yield context.call_activity("price_order", order)
    return {"id": order["id"], "total": total}


@app.activity_trigger(input_name="order")
def price_order(order: dict) -> float:
    return order["qty"] * 2.5


@app.event_grid_trigger(arg_name="event")
@app.queue_output(arg_name="seen", queue_name="conf-events-seen", connection="AzureWebJobsStorage")
def on_event(event: func.EventGridEvent, seen: func.Out[str]) -> None:
    result = json.dumps(
        {
            "id": event.id,
            "data": event.get_json(),
            "topic": event.topic,
            "subject": event.subject,
            "event_type": event.event_type,
        }
    )
    logging.info("Python EventGrid trigger processed an event: %s", result)
    if event.subject == "fail":
        raise RuntimeError("asked to fail")
    seen.set(result)


# Its trigger has no local implementation (and no connection): the host reports it in error and runs the rest.
@app.service_bus_queue_trigger(arg_name="msg", queue_name="orders", connection="ServiceBusConnection")
def on_service_bus(msg: func.ServiceBusMessage) -> None:
    logging.info("Python ServiceBus queue trigger processed message: %s", msg.get_body().decode("utf-8"))
