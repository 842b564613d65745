"""The worker process that runs durable user code (orchestrators, entities, activities), as the Python
language worker does on Azure: the host never runs this code itself, so a function that loops, blocks,
crashes or calls `os._exit` cannot stall or kill the host.

Started by `workers.WorkerPool` as `python -m local_runtime.durable.worker FD APP_DIR SCRIPT LEVELS`: FD is
one end of a socket pair carrying pickled `(call_id, kind, function, payload)` requests and
`(call_id, ok, value)` answers (the first message is `("ready", pid)`). Sync functions run on thread pools
(orchestrators and entities on their own, so a pool full of sleeping activities cannot starve them), async
activities on one event loop thread. When the host goes away (the socket closes) the worker exits at once.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from local_runtime.durable import calls
from local_runtime.indexing import FunctionInfo, index_functions, load_app
from local_runtime.invoke import FunctionLogFilter, current_function, unportable

READY = "ready"


def _setup_logging(levels: dict[str, str]) -> None:
    handler = logging.StreamHandler(sys.stdout)
    categories = FunctionLogFilter(levels)
    handler.addFilter(categories)
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(function)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(categories.lowest)
    logging.getLogger("azure").setLevel(logging.WARNING)


class Worker:
    def __init__(self, conn: Connection, app_dir: Path, script: str) -> None:
        self.conn = conn
        self.app_dir = str(app_dir)
        calls.memoize_history_timestamps()
        self.functions: dict[str, FunctionInfo] = {
            f.name: f for f in index_functions(load_app(app_dir, script))
        }
        self.send_lock = threading.Lock()
        threads = int(os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT") or 0) or None
        self.activity_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="activity")
        self.code_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="orchestrator")
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="async-functions", daemon=True).start()

    def send(self, message: tuple[Any, ...]) -> None:
        with self.send_lock:
            self.conn.send(message)

    def serve(self) -> None:
        self.send((READY, os.getpid()))
        while True:
            try:
                call_id, kind, name, payload = self.conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the host is gone: nothing may outlive it
            fn = self.functions.get(name)
            if fn is None:
                self.send((call_id, False, ("error", f"no function named {name!r} in this worker")))
            elif kind == "function":
                self._start_function(call_id, fn, payload)
            elif kind == "activity" and calls.is_async(fn):
                fut = asyncio.run_coroutine_threadsafe(
                    calls.run_activity_async(fn, payload, self.app_dir), self.loop
                )
                fut.add_done_callback(functools.partial(self._answer, call_id))
            else:
                pool = self.activity_pool if kind == "activity" else self.code_pool
                pool.submit(self._run, call_id, kind, fn, payload)

    # ---- HTTP, timer, queue, blob and Event Grid functions (local_runtime.invoke prepares the arguments)
    def _start_function(self, call_id: int, fn: FunctionInfo, payload: dict[str, Any]) -> None:
        kwargs, outs = unportable(payload["kwargs"])
        if inspect.iscoroutinefunction(fn.user_function):

            async def run_async() -> Any:
                token = current_function.set(fn.name)
                try:
                    return await fn.user_function(**kwargs)
                finally:
                    current_function.reset(token)

            fut = asyncio.run_coroutine_threadsafe(run_async(), self.loop)
            fut.add_done_callback(functools.partial(self._function_done, call_id, outs))
        else:
            self.activity_pool.submit(self._run_function, call_id, fn, kwargs, outs)

    def _run_function(
        self, call_id: int, fn: FunctionInfo, kwargs: dict[str, Any], outs: dict[str, Any]
    ) -> None:
        token = current_function.set(fn.name)
        try:
            value = fn.user_function(**kwargs)
        except BaseException as exc:  # sys.exit() included: it fails the invocation, never the worker
            self.send((call_id, False, ("error", "".join(traceback.format_exception(exc)).rstrip())))
            return
        finally:
            current_function.reset(token)
        self._send_function_result(call_id, value, outs)

    def _function_done(self, call_id: int, outs: dict[str, Any], fut: Any) -> None:
        try:
            value = fut.result()
        except BaseException as exc:
            self.send((call_id, False, ("error", "".join(traceback.format_exception(exc)).rstrip())))
            return
        self._send_function_result(call_id, value, outs)

    def _send_function_result(self, call_id: int, value: Any, outs: dict[str, Any]) -> None:
        result = (value, {name: out.get() for name, out in outs.items()})
        try:
            self.send((call_id, True, result))
        except Exception as exc:  # a value pickle cannot carry
            text = f"{type(exc).__name__}: the function's result cannot be sent to the host: {exc}"
            self.send((call_id, False, ("error", text)))

    def _answer(self, call_id: int, fut: Any) -> None:
        try:
            self.send((call_id, True, fut.result()))
        except calls.ActivityFailure as f:
            self.send((call_id, False, ("failure", f.reason, f.details)))
        except BaseException as exc:
            self.send((call_id, False, ("error", f"{type(exc).__name__}: {exc}")))

    def _run(self, call_id: int, kind: str, fn: FunctionInfo, payload: Any) -> None:
        try:
            if kind == "activity":
                value: Any = calls.run_activity_sync(fn, payload, self.app_dir)
            elif kind == "orchestrator":
                value = calls.run_orchestrator(fn, payload)
            else:
                value = calls.run_entity(fn, payload)
        except calls.ActivityFailure as f:
            self.send((call_id, False, ("failure", f.reason, f.details)))
            return
        except BaseException as exc:  # sys.exit() included: it fails the call, never the worker
            self.send((call_id, False, ("error", f"{type(exc).__name__}: {exc}")))
            return
        self.send((call_id, True, value))


def main(argv: list[str]) -> int:
    fd, app_dir, script, levels = int(argv[0]), Path(argv[1]), argv[2], json.loads(argv[3])
    conn = Connection(fd)
    _setup_logging(levels)
    try:
        worker = Worker(conn, app_dir, script)
    except BaseException as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return 1
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
