"""Activities: `maxConcurrentActivityFunctions` workers take work items, run them in a worker process
(or, for `call_http`, as the built-in HTTP activity with bounded polling) and commit the completions in
batches; an activity whose worker died is queued again.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from local_runtime.durable import calls
from local_runtime.durable import history as h
from local_runtime.durable.core import (
    EngineCore,
    _Effects,
    log,
)
from local_runtime.durable.store import WorkItem
from local_runtime.durable.workers import FunctionTimeout, WorkerDied

HTTP_POLL_DEFAULT = 30.0  # seconds between call_http 202 polls without Retry-After (the extension's default)
HTTP_REQUEST_TIMEOUT = 100.0  # seconds per call_http request (HttpClient's default)
HTTP_POLL_MAX = 300.0  # longest Retry-After honoured between call_http polls
HTTP_POLL_LIMIT = 24 * 3600.0  # call_http polling without a timeout or functionTimeout ends after a day


def _seconds(value: Any) -> float | None:
    """A DurableHttpRequest timeout: seconds, or a TimeSpan text ("00:01:30")."""
    if isinstance(value, int | float) and value > 0:
        return float(value)
    if isinstance(value, str) and value.count(":") == 2:
        try:
            hh, mm, ss = value.split(":")
            total = int(hh) * 3600 + int(mm) * 60 + float(ss)
        except ValueError:
            return None
        return total if total > 0 else None
    return None


class Activities(EngineCore):
    async def _activity_worker(self) -> None:
        while True:
            w = await self.work_q.get()
            if self.stopping:
                return
            self.in_flight += 1
            self.stats["activities"] += 1
            try:
                ev = await self._run_work_item(w)
            except WorkerDied as exc:
                # as on Azure when a worker dies mid-activity: the activity runs again (at least once)
                log.warning("durable: activity %s (%s #%d) is retried: %s", w.name, w.instance_id, w.seq, exc)
                asyncio.get_running_loop().call_later(0.1, self.work_q.put_nowait, w)
                continue
            finally:
                self.in_flight -= 1
            self.completions.append((w, ev))
            if not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_completions)

    async def _run_work_item(self, w: WorkItem) -> h.Event:
        now = h.utcnow
        try:
            if w.kind == "http":
                result = await self._http_activity(w.input)
            else:
                fn = self.activities.get(w.name.lower())
                if fn is None:
                    raise calls.ActivityFailure(
                        f"The function '{w.name}' doesn't exist, is disabled, or is not an activity function",
                        "",
                    )
                ok, value = await self.workers.call("activity", fn.name, w.input)
                if not ok and value[0] == "failure":
                    raise calls.ActivityFailure(value[1], value[2])
                if not ok:
                    raise RuntimeError(str(value[-1]))
                result = value
            return h.event(h.TASK_COMPLETED, now(), TaskScheduledId=w.seq, Result=result)
        except WorkerDied:
            raise  # not a result: the activity runs again
        except FunctionTimeout as exc:
            reason = f"Activity function '{w.name}' failed: FunctionTimeoutException: {exc}"
            details = json.dumps({"ClassName": "Microsoft.Azure.WebJobs.Host.FunctionTimeoutException"})
            return h.event(h.TASK_FAILED, now(), TaskScheduledId=w.seq, Reason=reason, Details=details)
        except calls.ActivityFailure as f:
            return h.event(h.TASK_FAILED, now(), TaskScheduledId=w.seq, Reason=f.reason, Details=f.details)
        except Exception as exc:
            failure = calls.activity_failure(w.name, exc)
            return h.event(
                h.TASK_FAILED, now(), TaskScheduledId=w.seq, Reason=failure.reason, Details=failure.details
            )

    async def _http_activity(self, input_text: str | None) -> str:
        """`call_http`: one request, then (async pattern) GET polls of `Location` while it answers 202.
        Bounded: each request by HTTP_REQUEST_TIMEOUT (HttpClient's 100 s), `Retry-After` by HTTP_POLL_MAX,
        the whole call by the request's `timeout`, else functionTimeout, else HTTP_POLL_LIMIT."""
        req = json.loads(input_text or "{}")
        if self.http is None:
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_REQUEST_TIMEOUT))
        headers = {k: v if isinstance(v, str) else ",".join(v) for k, v in (req.get("headers") or {}).items()}
        method, uri, content = str(req.get("method") or "GET"), str(req["uri"]), req.get("content")
        limit = _seconds(req.get("timeout")) or self.function_timeout or HTTP_POLL_LIMIT
        deadline = time.monotonic() + limit
        while True:
            async with self.http.request(method, uri, data=content, headers=headers) as resp:
                body = await resp.text()
                location = resp.headers.get("Location")
                if resp.status == 202 and location and req.get("asynchronousPatternEnabled", True):
                    # the Durable HTTP async pattern: poll Location with GET until it stops answering 202
                    try:
                        delay = min(HTTP_POLL_MAX, max(0.0, float(resp.headers.get("Retry-After", ""))))
                    except ValueError:
                        delay = HTTP_POLL_DEFAULT
                    if time.monotonic() + delay > deadline:
                        raise TimeoutError(
                            f"call_http: {uri} still answered 202 after {limit:.0f} s of polling (the "
                            "limit is the request's timeout, else functionTimeout, else 24 h)"
                        )
                    method, uri, content = "GET", location, None
                    await asyncio.sleep(delay)
                    continue
                return json.dumps(
                    {
                        "statusCode": resp.status,
                        "headers": {k: v for k, v in resp.headers.items()},
                        "content": body,
                    }
                )

    def _flush_completions(self) -> None:
        self.flush_scheduled = False
        batch, self.completions = self.completions, []
        if not batch or self.store is None:
            return
        fx = _Effects()
        try:
            with self.db.transaction() as c:
                for w, ev in batch:
                    if self.db.delete_work(c, w):  # gone if the instance was terminated, purged or restarted
                        fx.inbox.append(self.db.add_inbox(c, w.instance_id, w.execution_id, time.time(), ev))
        except Exception:
            log.exception("durable: recording %d activity completions failed; retrying", len(batch))
            self.completions[:0] = batch
            if not self.flush_scheduled:
                self.flush_scheduled = True
                asyncio.get_running_loop().call_later(1.0, self._flush_completions)
            return
        for w, _ in batch:
            left = self.outstanding.get(w.instance_id, 1) - 1
            if left > 0:
                self.outstanding[w.instance_id] = left
            else:
                self.outstanding.pop(w.instance_id, None)
        self._apply(fx, coalesce=True)
