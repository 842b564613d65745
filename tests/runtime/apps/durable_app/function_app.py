"""Sample durable app for the host tests: the durable client binding reaches HTTP, queue and timer functions
(the durable engine itself is tested in tests/runtime_durable)."""

import json
import os

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="start/{name}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    instance_id = await client.start_new("greet", None, req.route_params["name"])
    return client.create_check_status_response(req, instance_id)


@app.queue_trigger(arg_name="msg", queue_name="start-requests", connection="AzureWebJobsStorage")
@app.durable_client_input(client_name="client")
async def queue_start(msg: func.QueueMessage, client: df.DurableOrchestrationClient) -> None:
    body = msg.get_json()
    await client.start_new("greet", body["id"], body["name"])


@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=True)
@app.durable_client_input(client_name="client")
async def timer_start(timer: func.TimerRequest, client: df.DurableOrchestrationClient) -> None:
    await client.start_new("greet", "from-timer", "timer")


@app.orchestration_trigger(context_name="context")
def greet(context: df.DurableOrchestrationContext):  # type: ignore[no-untyped-def]
    name = context.get_input()
    result = yield context.call_activity("say_hello", name)
    return result


@app.activity_trigger(input_name="name")
def say_hello(name: str) -> str:
    with open(os.environ["RUNTIME_TEST_EVENTS"], "a") as f:
        f.write(json.dumps({"fn": "say_hello", "name": name}) + "\n")
    return f"Hello {name}!"
