"""Sample Durable Functions app for the local runtime's durable tests: one function per feature."""

import asyncio
import json
import os
import threading
from datetime import timedelta

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=50, max_number_of_attempts=3)


def _log(line: str) -> None:
    path = os.environ.get("DURABLE_SAMPLE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


# ---------------------------------------------------------------- HTTP starter with the client binding
@app.route(route="orchestrators/{functionName}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    body = req.get_body()
    instance_id = await client.start_new(
        req.route_params["functionName"], None, req.get_json() if body else None
    )
    return client.create_check_status_response(req, instance_id)


# ---------------------------------------------------------------- activities
@app.activity_trigger(input_name="name")
def say_hello(name: str) -> str:
    return f"Hello {name}!"


@app.activity_trigger(input_name="x")
def inc(x: int) -> int:
    _log(f"inc {x}")
    return x + 1


@app.activity_trigger(input_name="x")
async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@app.activity_trigger(input_name="item")
def slow_inc(item: str) -> int:
    """item = "<tag>:<n>"; logs the item when it starts, then does its (slow) work."""
    import time

    _log(f"slow_inc {item}")
    time.sleep(float(os.environ.get("DURABLE_SAMPLE_SLOW", "0.2")))
    return int(item.rsplit(":", 1)[1]) + 1


@app.activity_trigger(input_name="key")
def flaky(key: str) -> str:
    """Fails until it has been called `n` times for `key` (counted in a file next to the log)."""
    name, _, n = key.partition(":")
    path = os.environ["DURABLE_SAMPLE_LOG"] + ".flaky." + name
    count = 1
    if os.path.exists(path):
        with open(path) as f:
            count += int(f.read())
    with open(path, "w") as f:
        f.write(str(count))
    if count < int(n):
        raise ValueError(f"attempt {count} of {name} failed")
    return f"{name} ok after {count}"


@app.activity_trigger(input_name="x")
def always_fails(x: str) -> str:
    raise RuntimeError(f"nope {x}")


_probe_lock = threading.Lock()
_probe = {"now": 0, "max": 0}


@app.activity_trigger(input_name="x")
def concurrency_probe(x: int) -> int:
    """Records how many activities run at once (sync activities run on the host's worker threads)."""
    import time

    with _probe_lock:
        _probe["now"] += 1
        _probe["max"] = max(_probe["max"], _probe["now"])
    time.sleep(0.15)
    with _probe_lock:
        _probe["now"] -= 1
    return _probe["max"]


# ---------------------------------------------------------------- orchestrators
@app.orchestration_trigger(context_name="context")
def probe_fan_out(context: df.DurableOrchestrationContext):
    results = yield context.task_all([context.call_activity("concurrency_probe", i) for i in range(12)])
    return max(results)


@app.orchestration_trigger(context_name="context")
def retry_interleaved(context: df.DurableOrchestrationContext):
    """Retries interleaved with plain calls, a signal and a timer: ids must match DTFx exactly."""
    tag = context.get_input()
    first = context.call_activity_with_retry("flaky", RETRY, f"{tag}A:2")
    plain = context.call_activity("say_hello", "B")
    second = context.call_activity_with_retry("flaky", RETRY, f"{tag}C:3")
    results = yield context.task_all([first, plain, second])
    context.signal_entity(df.EntityId("Counter", tag), "add", 1)
    yield context.create_timer(context.current_utc_datetime + timedelta(milliseconds=10))
    winner = yield context.task_any(
        [
            context.call_activity_with_retry("flaky", RETRY, f"{tag}D:2"),
            context.call_activity("say_hello", "E"),
        ]
    )
    last = yield context.call_activity("say_hello", "F")
    return [*results, winner.result, last]


@app.orchestration_trigger(context_name="context")
def hello_sequence(context: df.DurableOrchestrationContext):
    a = yield context.call_activity("say_hello", "Tokyo")
    b = yield context.call_activity("say_hello", "Seattle")
    context.set_custom_status({"stage": "fan-out"})
    rest = yield context.task_all([context.call_activity("say_hello", c) for c in "ABC"])
    return [a, b, *rest]


@app.orchestration_trigger(context_name="context")
def fan_out(context: df.DurableOrchestrationContext):
    m = context.get_input()
    results = yield context.task_all([context.call_activity("inc", i) for i in range(m)])
    return sum(results)


@app.orchestration_trigger(context_name="context")
def slow_fan_out(context: df.DurableOrchestrationContext):
    spec = context.get_input()
    tasks = [context.call_activity("slow_inc", f"{spec['tag']}:{i}") for i in range(spec["m"])]
    results = yield context.task_all(tasks)
    return sum(results)


@app.orchestration_trigger(context_name="context")
def chain(context: df.DurableOrchestrationContext):
    n = context.get_input()
    x = 0
    for _ in range(n):
        x = yield context.call_activity("inc", x)
    y = yield context.call_activity("async_double", x)
    return y


@app.orchestration_trigger(context_name="context")
def retry_then_ok(context: df.DurableOrchestrationContext):
    key = context.get_input()
    r = yield context.call_activity_with_retry("flaky", RETRY, key)
    after = yield context.call_activity("say_hello", "after")
    return [r, after]


@app.orchestration_trigger(context_name="context")
def retry_exhausts(context: df.DurableOrchestrationContext):
    try:
        yield context.call_activity_with_retry("always_fails", RETRY, "x")
    except Exception as e:
        msg = str(e)
        after = yield context.call_activity("say_hello", "after")
        return {"error": msg.split(" \n ")[0], "after": after}
    return "unexpected"


@app.orchestration_trigger(context_name="context")
def unhandled_failure(context: df.DurableOrchestrationContext):
    yield context.call_activity("always_fails", "boom")
    return "unreachable"


@app.activity_trigger(input_name="code")
def exits(code: int) -> None:
    import sys

    sys.exit(code)


@app.orchestration_trigger(context_name="context")
def exit_in_activity(context: df.DurableOrchestrationContext):
    try:
        yield context.call_activity("exits", 3)
    except Exception as e:
        return str(e).split(" \n ")[0]
    return "no error"


@app.orchestration_trigger(context_name="context")
def exit_in_orchestrator(context: df.DurableOrchestrationContext):
    import sys

    sys.exit(4)
    yield  # a generator, like every orchestrator


@app.orchestration_trigger(context_name="context")
def code_failure(context: df.DurableOrchestrationContext):
    yield context.call_activity("say_hello", "x")
    raise RuntimeError("deterministic bug")


@app.orchestration_trigger(context_name="context")
def approval(context: df.DurableOrchestrationContext):
    seconds = context.get_input()
    timeout = context.create_timer(context.current_utc_datetime + timedelta(seconds=seconds))
    ev = context.wait_for_external_event("Approval")
    winner = yield context.task_any([ev, timeout])
    if winner == ev:
        timeout.cancel()
        return {"approved": ev.result}
    return "timed out"


@app.orchestration_trigger(context_name="context")
def timer_then_activity(context: df.DurableOrchestrationContext):
    yield context.create_timer(context.current_utc_datetime + timedelta(milliseconds=300))
    r = yield context.call_activity("say_hello", "timer")
    return r


@app.orchestration_trigger(context_name="context")
def two_waits(context: df.DurableOrchestrationContext):
    a = yield context.wait_for_external_event("E")
    b = yield context.wait_for_external_event("E")
    return [a, b]


@app.orchestration_trigger(context_name="context")
def late_waits(context: df.DurableOrchestrationContext):
    yield context.call_activity("slow_inc", "late:0")
    a = yield context.wait_for_external_event("E")
    b = yield context.wait_for_external_event("E")
    return [a, b]


@app.activity_trigger(input_name="x", activity="renamed_activity")
def original_def(x: int) -> int:
    return x


@app.orchestration_trigger(context_name="context")
def calls_by_function_object(context: df.DurableOrchestrationContext):
    r = yield context.call_activity(original_def, 1)
    return r


@app.orchestration_trigger(context_name="context")
def calls_by_durable_name(context: df.DurableOrchestrationContext):
    r = yield context.call_activity("Renamed_Activity", 1)
    return r


@app.orchestration_trigger(context_name="context")
def child(context: df.DurableOrchestrationContext):
    n = context.get_input()
    if n <= 0:
        return 0
    r = yield context.call_activity("inc", n)
    deeper = yield context.call_sub_orchestrator("child", n - 1)
    return r + deeper


@app.orchestration_trigger(context_name="context")
def parent(context: df.DurableOrchestrationContext):
    a = yield context.call_sub_orchestrator("child", 3, instance_id=f"{context.instance_id}-child")
    b = yield context.task_all([context.call_sub_orchestrator("child", i) for i in (1, 2)])
    return [a, b]


@app.orchestration_trigger(context_name="context")
def failing_child(context: df.DurableOrchestrationContext):
    key = context.get_input()
    yield context.call_activity("flaky", key)
    return "child ok"


@app.orchestration_trigger(context_name="context")
def parent_retry(context: df.DurableOrchestrationContext):
    key = context.get_input()
    r = yield context.call_sub_orchestrator_with_retry("failing_child", RETRY, key)
    return r


@app.orchestration_trigger(context_name="context")
def parent_plain(context: df.DurableOrchestrationContext):
    r = yield context.call_sub_orchestrator("failing_child", context.get_input())
    return f"parent got {r}"


@app.orchestration_trigger(context_name="context")
def parent_of_waiter(context: df.DurableOrchestrationContext):
    try:
        yield context.call_sub_orchestrator("waiter", None, instance_id=f"{context.instance_id}-w")
    except Exception as e:
        return "child failed: " + str(e).split(" \n ")[0]
    return "child done"


@app.orchestration_trigger(context_name="context")
def http_caller(context: df.DurableOrchestrationContext):
    r = yield context.call_http("GET", context.get_input())
    return {"status": r["statusCode"], "is_list": r["content"].startswith("[")}


@app.orchestration_trigger(context_name="context")
def http_poster(context: df.DurableOrchestrationContext):
    r = yield context.call_http("POST", context.get_input(), content={"start": True})
    return {"status": r["statusCode"], "content": json.loads(r["content"])}


def _plan_task(context: df.DurableOrchestrationContext, step: dict, tag: str):
    """One step of an `interpreter` plan as a Task (see tests/runtime_durable/test_sequence_fuzz.py)."""
    kind, arg = next(iter(step.items()))
    if kind == "a":
        return context.call_activity("say_hello", str(arg))
    if kind == "r":
        key, fails = arg
        return context.call_activity_with_retry("flaky", RETRY, f"{tag}{key}:{fails + 1}")
    if kind == "t":
        return context.create_timer(context.current_utc_datetime + timedelta(milliseconds=arg))
    if kind == "f":
        return context.call_activity("always_fails", str(arg))
    if kind == "s":
        return context.call_activity("slow_inc", f"{tag}:{arg}")
    if kind == "all":
        return context.task_all([_plan_task(context, s, tag) for s in arg])
    if kind == "any":
        return context.task_any([_plan_task(context, s, tag) for s in arg])
    if kind == "sub":
        return context.call_sub_orchestrator(
            "interpreter", {"tag": f"{tag}{arg['key']}", "steps": arg["steps"]}
        )
    if kind == "sig":
        context.signal_entity(df.EntityId("Counter", tag), "add", arg)
        return None
    raise ValueError(f"unknown step {step}")


@app.orchestration_trigger(context_name="context")
def interpreter(context: df.DurableOrchestrationContext):
    plan = context.get_input()
    out = []
    for step in plan["steps"]:
        task = _plan_task(context, step, plan["tag"])
        if task is None:
            out.append("signalled")
            continue
        try:
            result = yield task
        except Exception:
            out.append("error")
            continue
        out.append(_plain(step, result))
    return out


def _plain(step: dict, result):
    """task_any results are Tasks: report them as "any" (the winner is timing-dependent)."""
    if "any" in step:
        return "any"
    if "all" in step:
        return [_plain(s, r) for s, r in zip(step["all"], result, strict=True)]
    return result


@app.orchestration_trigger(context_name="context")
def gated(context: df.DurableOrchestrationContext):
    """Blocks inside orchestrator code (a bad habit the host must survive) until the test creates
    `<input>/open` (the code runs in a worker process: the gate is a file)."""
    import time
    from pathlib import Path

    folder = Path(context.get_input())
    (folder / "entered").touch()
    deadline = time.monotonic() + 30
    while not (folder / "open").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"
    yield  # a generator, like every orchestrator


@app.orchestration_trigger(context_name="context")
def replay_flags(context: df.DurableOrchestrationContext):
    flags = [context.is_replaying]
    for i in range(3):
        yield context.call_activity("say_hello", str(i))
        flags.append(context.is_replaying)
    return flags


@app.orchestration_trigger(context_name="context")
def eternal(context: df.DurableOrchestrationContext):
    n = context.get_input()
    r = yield context.call_activity("inc", n)
    if r < 5:
        context.continue_as_new(r)
        return None
    return r


@app.orchestration_trigger(context_name="context")
def waiter(context: df.DurableOrchestrationContext):
    context.set_custom_status("waiting")
    v = yield context.wait_for_external_event("Go")
    r = yield context.call_activity("say_hello", str(v))
    return r


@app.orchestration_trigger(context_name="context")
def counter_user(context: df.DurableOrchestrationContext):
    eid = df.EntityId("Counter", context.get_input())
    context.signal_entity(eid, "add", 5)
    v = yield context.call_entity(eid, "add", 10)
    got = yield context.call_entity(eid, "get")
    try:
        yield context.call_entity(eid, "fail")
    except Exception as e:
        return [v, got, str(e)]
    return [v, got, "no error"]


@app.entity_trigger(context_name="context")
def Counter(context: df.DurableEntityContext):
    s = context.get_state(lambda: 0)
    op = context.operation_name
    if op == "add":
        s += context.get_input()
        context.set_result(s)
    elif op == "get":
        context.set_result(s)
    elif op == "fail":
        raise ValueError("bad op")
    elif op == "delete":
        context.destruct_on_exit()
        return
    context.set_state(s)


@app.activity_trigger(input_name="x")
def uses_thread_local(x: int, context: func.Context) -> int:
    context.thread_local_storage.value = x  # as the worker's per-invocation thread-local storage
    return context.thread_local_storage.value * 2


@app.orchestration_trigger(context_name="context")
def thread_local_user(context: df.DurableOrchestrationContext):
    return (yield context.call_activity("uses_thread_local", 21))
