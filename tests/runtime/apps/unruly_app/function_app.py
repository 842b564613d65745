"""Durable functions that misbehave (loop forever, sleep past functionTimeout, get their worker killed) next
to well-behaved ones, for the host's safety-rail tests: the misbehaving ones fail or retry, the others go on."""

import json
import os
import time
from pathlib import Path

import azure.durable_functions as df
import azure.functions as func

app = df.DFApp(http_auth_level=func.AuthLevel.ANONYMOUS)
MARKS = Path(os.environ.get("UNRULY_MARKS", "/tmp"))


@app.orchestration_trigger(context_name="context")
def spin(context: df.DurableOrchestrationContext):
    while True:  # never yields: only functionTimeout ends it
        pass
    yield


@app.orchestration_trigger(context_name="context")
def sleeper(context: df.DurableOrchestrationContext):
    return (yield context.call_activity("sleepy", 30))


@app.activity_trigger(input_name="seconds")
def sleepy(seconds: int) -> str:
    time.sleep(seconds)
    return "woke"


@app.orchestration_trigger(context_name="context")
def quick(context: df.DurableOrchestrationContext):
    return (yield context.call_activity("where", context.get_input()))


@app.activity_trigger(input_name="tag")
def where(tag: str) -> dict:
    time.sleep(0.2)
    return {"tag": tag, "pid": os.getpid()}


@app.orchestration_trigger(context_name="context")
def fan(context: df.DurableOrchestrationContext):
    return (
        yield context.task_all([context.call_activity("where", str(i)) for i in range(context.get_input())])
    )


@app.orchestration_trigger(context_name="context")
def victim(context: df.DurableOrchestrationContext):
    return (yield context.call_activity("killable", context.get_input()))


@app.activity_trigger(input_name="tag")
def killable(tag: str) -> int:
    """Records each attempt (with its worker's pid); the first one waits to be killed."""
    marks = MARKS / f"{tag}.jsonl"
    with marks.open("a") as f:
        f.write(json.dumps({"pid": os.getpid()}) + "\n")
    attempts = len(marks.read_text().splitlines())
    if attempts == 1:
        time.sleep(2.5)  # under functionTimeout; the test kills the worker meanwhile
    return attempts


@app.orchestration_trigger(context_name="context")
def blocky(context: df.DurableOrchestrationContext):
    """Blocks in orchestrator code for 0.5 s, recording when (maxConcurrentOrchestratorFunctions tests)."""
    with (MARKS / "blocky.jsonl").open("a") as f:
        f.write(json.dumps({"start": time.time()}) + "\n")
    time.sleep(0.5)
    with (MARKS / "blocky.jsonl").open("a") as f:
        f.write(json.dumps({"end": time.time()}) + "\n")
    return context.get_input()
    yield
