"""Durable Functions patterns written the way the public Python v2 samples write them: chaining, fan-out,
human interaction (events racing a timer), monitor, eternal orchestration (continue_as_new), the counter
entity, HTTP starters (check-status and wait-for-completion) and management through the client."""

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta

import azure.durable_functions as df
import azure.functions as func
from durable_blueprints import bp

myApp = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
myApp.register_functions(bp)


# ---------------------------------------------------------------- HTTP starters
@myApp.route(route="orchestrators/{functionName}")
@myApp.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client):
    function_name = req.route_params.get("functionName")
    instance_id = await client.start_new(function_name)
    logging.info(f"Started orchestration with ID = '{instance_id}'.")
    return client.create_check_status_response(req, instance_id)


@myApp.route(route="start/{functionName}", methods=["POST"])
@myApp.durable_client_input(client_name="client")
async def http_start_with_input(req: func.HttpRequest, client):
    payload = json.loads(req.get_body().decode())  # Load JSON post request data
    instance_id = await client.start_new(req.route_params["functionName"], client_input=payload)
    return client.create_check_status_response(req, instance_id)


@myApp.route(route="startwait/{functionName}", methods=["POST"])
@myApp.durable_client_input(client_name="client")
async def http_start_wait(req: func.HttpRequest, client):
    client_input = req.get_json() if req.get_body() else None
    instance_id = await client.start_new(req.route_params["functionName"], None, client_input)
    timeout = int(req.params.get("timeout", "10000"))
    return await client.wait_for_completion_or_create_check_status_response(
        req, instance_id, timeout_in_milliseconds=timeout, retry_interval_in_milliseconds=200
    )


@myApp.route(route="payload/{instanceId}", methods=["GET"])
@myApp.durable_client_input(client_name="client")
async def management_payload(req: func.HttpRequest, client) -> func.HttpResponse:
    payload = client.create_http_management_payload(req.route_params["instanceId"])
    return func.HttpResponse(json.dumps(payload), mimetype="application/json")


# ---------------------------------------------------------------- function chaining
@myApp.orchestration_trigger(context_name="context")
def my_orchestrator(context: df.DurableOrchestrationContext):
    result1 = yield context.call_activity("say_hello", "Tokyo")
    result2 = yield context.call_activity("say_hello", "Seattle")
    result3 = yield context.call_activity("say_hello", "London")
    return [result1, result2, result3]


@myApp.activity_trigger(input_name="city")
def say_hello(city: str) -> str:
    return f"Hello {city}!"


# ---------------------------------------------------------------- fan-out / fan-in
@myApp.orchestration_trigger(context_name="context")
def fan_out_fan_in(context: df.DurableOrchestrationContext):
    spec = context.get_input()
    if not spec:
        raise Exception("An input with 'items' is required")
    items = yield context.call_activity("list_items", spec)
    tasks = [context.call_activity("measure_item", item) for item in items]
    results = yield context.task_all(tasks)
    return sum(results)


@myApp.activity_trigger(input_name="spec")
def list_items(spec: dict) -> list:
    return [f"item-{i:02d}" + "x" * i for i in range(spec["items"])]


@myApp.activity_trigger(input_name="item")
def measure_item(item: str) -> int:
    return len(item)


# ---------------------------------------------------------------- human interaction
@myApp.orchestration_trigger(context_name="context")
def phone_verification(context: df.DurableOrchestrationContext):
    settings = context.get_input()
    challenge_code = yield context.call_activity("send_challenge", settings["phone"])
    expiration = context.current_utc_datetime + timedelta(seconds=settings["timeoutSeconds"])
    timeout_task = context.create_timer(expiration)
    authorized = False
    for _ in range(3):
        challenge_response_task = context.wait_for_external_event("SmsChallengeResponse")
        winner = yield context.task_any([challenge_response_task, timeout_task])
        if winner == challenge_response_task:
            if challenge_response_task.result == challenge_code:
                authorized = True
                break
        else:
            break
    if not timeout_task.is_completed:
        timeout_task.cancel()
    return authorized


@myApp.activity_trigger(input_name="phone")
def send_challenge(phone: str) -> int:
    logging.info(f"Sending challenge to {phone}")
    return 4242


@myApp.orchestration_trigger(context_name="context")
def approval_workflow(context: df.DurableOrchestrationContext):
    context.set_custom_status("Waiting for approval")
    approval = yield context.wait_for_external_event("Approval")
    context.set_custom_status({"approvedBy": approval})
    return f"Approved by {approval}"


# ---------------------------------------------------------------- monitor and eternal orchestration
@myApp.orchestration_trigger(context_name="context")
def job_monitor(context: df.DurableOrchestrationContext):
    job = context.get_input()
    expiry_time = datetime.fromisoformat(job["expiryTime"])
    polls = job.get("polls", 0)
    while context.current_utc_datetime < expiry_time:
        polls += 1
        job_status = yield context.call_activity("get_job_status", job)
        context.set_custom_status({"polls": polls, "lastStatus": job_status})
        if job_status == "Completed":
            yield context.call_activity("send_alert", job["jobId"])
            return {"jobId": job["jobId"], "polls": polls}
        next_check = context.current_utc_datetime + timedelta(seconds=job["pollingInterval"])
        yield context.create_timer(next_check)
    return {"jobId": job["jobId"], "polls": polls, "expired": True}


@myApp.activity_trigger(input_name="job")
def get_job_status(job: dict) -> str:
    return "Completed" if time.time() >= job["readyAt"] else "Running"


@myApp.activity_trigger(input_name="jobId")
def send_alert(jobId: str) -> str:
    logging.info(f"Job {jobId} completed")
    return jobId


@myApp.orchestration_trigger(context_name="context")
def periodic_cleanup(context: df.DurableOrchestrationContext):
    state = context.get_input() or {"round": 0, "cleaned": []}
    cleaned = yield context.call_activity("do_cleanup", state["round"])
    state = {"round": state["round"] + 1, "cleaned": state["cleaned"] + [cleaned]}
    if state["round"] >= 3:
        return state
    yield context.create_timer(context.current_utc_datetime + timedelta(milliseconds=300))
    context.continue_as_new(state)


@myApp.activity_trigger(input_name="round")
def do_cleanup(round: int) -> str:
    return f"round-{round}"


# ---------------------------------------------------------------- entities
@myApp.entity_trigger(context_name="context")
def Counter(context: df.DurableEntityContext):
    current_value = context.get_state(lambda: 0)
    operation = context.operation_name
    if operation == "add":
        amount = context.get_input()
        current_value += amount
    elif operation == "reset":
        current_value = 0
    elif operation == "get":
        context.set_result(current_value)
    context.set_state(current_value)


@myApp.route(route="counter/{entityKey}/add/{amount:int}", methods=["POST"])
@myApp.durable_client_input(client_name="client")
async def counter_add(req: func.HttpRequest, client) -> func.HttpResponse:
    entity_id = df.EntityId("Counter", req.route_params["entityKey"])
    await client.signal_entity(entity_id, "add", int(req.route_params["amount"]))
    return func.HttpResponse(status_code=202)


@myApp.route(route="counter/{entityKey}", methods=["GET"])
@myApp.durable_client_input(client_name="client")
async def counter_read(req: func.HttpRequest, client) -> func.HttpResponse:
    entity_id = df.EntityId("Counter", req.route_params["entityKey"])
    response = await client.read_entity_state(entity_id)
    body = {"exists": response.entity_exists, "state": response.entity_state}
    return func.HttpResponse(json.dumps(body), mimetype="application/json")


@myApp.orchestration_trigger(context_name="context")
def counter_orchestrator(context: df.DurableOrchestrationContext):
    entity_id = df.EntityId("Counter", context.get_input())
    context.signal_entity(entity_id, "add", 10)
    yield context.call_entity(entity_id, "add", 5)
    state = yield context.call_entity(entity_id, "get")
    return state


# ---------------------------------------------------------------- management through the client
@myApp.route(route="instances", methods=["GET"])
@myApp.durable_client_input(client_name="client")
async def list_instances(req: func.HttpRequest, client) -> func.HttpResponse:
    status = req.params.get("status")
    prefix = req.params.get("prefix")
    if status or prefix:
        statuses = [df.OrchestrationRuntimeStatus(s) for s in status.split(",")] if status else None
        instances = await client.get_status_by(runtime_status=statuses, instance_id_prefix=prefix)
    else:
        instances = await client.get_status_all()
    return func.HttpResponse(
        json.dumps(
            [
                {"instanceId": i.instance_id, "name": i.name, "runtimeStatus": i.runtime_status.value}
                for i in instances
            ]
        ),
        mimetype="application/json",
    )


@myApp.route(route="instances/{instanceId}", methods=["GET"])
@myApp.durable_client_input(client_name="client")
async def instance_status(req: func.HttpRequest, client) -> func.HttpResponse:
    status = await client.get_status(
        req.route_params["instanceId"], show_history=True, show_history_output=True
    )
    if not status:
        return func.HttpResponse("not found", status_code=404)
    body = status.to_json()
    # the SDK reads "history" but the host sends "historyEvents", which lands as an attribute of that name
    body["historyEvents"] = getattr(status, "historyEvents", None)
    return func.HttpResponse(json.dumps(body, default=str), mimetype="application/json")


@myApp.route(route="instances/{instanceId}/approve", methods=["POST"])
@myApp.durable_client_input(client_name="client")
async def approve(req: func.HttpRequest, client) -> func.HttpResponse:
    await client.raise_event(req.route_params["instanceId"], "Approval", req.get_json()["by"])
    return func.HttpResponse(status_code=202)


@myApp.route(route="instances/{instanceId}/terminate", methods=["POST"])
@myApp.durable_client_input(client_name="client")
async def terminate(req: func.HttpRequest, client) -> func.HttpResponse:
    await client.terminate(req.route_params["instanceId"], "user asked")
    return func.HttpResponse(status_code=202)


@myApp.route(route="instances/{instanceId}", methods=["DELETE"])
@myApp.durable_client_input(client_name="client")
async def purge(req: func.HttpRequest, client) -> func.HttpResponse:
    result = await client.purge_instance_history(req.route_params["instanceId"])
    return func.HttpResponse(json.dumps({"deleted": result.instances_deleted}), mimetype="application/json")


# a durable client function must be `async def`: the SDK's client middleware awaits it
@myApp.route(route="syncclient", methods=["GET"])
@myApp.durable_client_input(client_name="client")
def sync_client(req: func.HttpRequest, client) -> func.HttpResponse:
    return func.HttpResponse("never served")


# ---------------------------------------------------------------- async activities, named loggers
@myApp.route(route="FetchOrchestration_HttpStart")
@myApp.durable_client_input(client_name="client")
async def fetch_start(req: func.HttpRequest, client):
    instance_id = await client.start_new("FetchOrchestration")
    return client.create_check_status_response(req, instance_id)


@myApp.orchestration_trigger(context_name="context")
def FetchOrchestration(context: df.DurableOrchestrationContext):
    logger = logging.getLogger("FetchOrchestration")
    logger.info("Fetching data.")
    urls = ["https://example.invalid/a", "https://example.invalid/b", "https://example.invalid/c"]
    tasks = [context.call_activity("fetch_title", url) for url in urls]
    results = yield context.task_all(tasks)
    return "; ".join(results)


@myApp.activity_trigger(input_name="url")
async def fetch_title(url: str):
    logger = logging.getLogger("FetchTitle")
    logger.info(f"Fetching from url {url}.")
    await asyncio.sleep(0.01)
    return f"Title of {url.rsplit('/', 1)[-1]}"


# a timer-triggered starter (run_on_startup), as apps that kick off orchestrations on a schedule do
@myApp.timer_trigger(schedule="0 0 0 1 1 *", arg_name="mytimer", run_on_startup=True, use_monitor=False)
@myApp.durable_client_input(client_name="client")
async def timer_start(mytimer: func.TimerRequest, client) -> None:
    if mytimer.past_due:
        logging.info("The timer is past due!")
    instance_id = await client.start_new("my_orchestrator", "timer-started")
    logging.info(f"Started orchestration with ID = '{instance_id}'.")


# an entity operation that raises: the calling orchestrator sees the error, the entity state is kept
@myApp.entity_trigger(context_name="context", entity_name="Account")
def account_entity(context: df.DurableEntityContext):
    balance = context.get_state(lambda: 0)
    if context.operation_name == "deposit":
        balance += context.get_input()
    elif context.operation_name == "withdraw":
        amount = context.get_input()
        if amount > balance:
            raise ValueError(f"insufficient funds: {balance} < {amount}")
        balance -= amount
    context.set_state(balance)
    context.set_result(balance)


@myApp.orchestration_trigger(context_name="context")
def bank_orchestrator(context: df.DurableOrchestrationContext):
    account = df.EntityId("Account", context.get_input())
    yield context.call_entity(account, "deposit", 50)
    try:
        yield context.call_entity(account, "withdraw", 80)
        outcome = "withdrew"
    except Exception as exc:
        outcome = f"refused: {exc}"
    balance = yield context.call_entity(account, "withdraw", 20)
    return {"outcome": outcome, "balance": balance}
