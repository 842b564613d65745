"""Sample timer app for the local runtime tests: a 1 s NCRONTAB timer (run_on_startup, monitored) and a
TimeSpan timer; each invocation appends a JSON line to $RUNTIME_TEST_EVENTS."""

import json
import os
import time

import azure.functions as func

app = func.FunctionApp()


def record(**event: object) -> None:
    with open(os.environ["RUNTIME_TEST_EVENTS"], "a") as f:
        f.write(json.dumps({"t": time.time(), **event}) + "\n")


@app.timer_trigger(schedule="*/1 * * * * *", arg_name="timer", run_on_startup=True, use_monitor=True)
def every_second(timer: func.TimerRequest) -> None:
    record(fn="every_second", past_due=timer.past_due)


@app.timer_trigger(schedule="%TIMESPAN_SCHEDULE%", arg_name="timer")
async def every_span(timer: func.TimerRequest) -> None:
    record(fn="every_span", past_due=timer.past_due)


@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=True)
@app.retry(strategy="fixed_delay", max_retry_count="2", delay_interval="00:00:01")
def flaky(timer: func.TimerRequest, context: func.Context) -> None:
    retry = context.retry_context
    record(fn="flaky", retry_count=retry.retry_count, max_retry_count=retry.max_retry_count)
    if retry.retry_count < 2:
        raise RuntimeError("fails until the second retry")
