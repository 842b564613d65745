"""A fixed pool of daemon threads for sync activities.

`concurrent.futures.ThreadPoolExecutor` joins its threads at interpreter exit, so one long activity
(minutes of image building) would hold a stopping host hostage. These threads are daemons: a stop
abandons what still runs, and the activity's work item, never completed in SQLite, runs again later.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class DaemonPool:
    """`submit(fn, *args)` -> Future, run on one of `size` daemon threads."""

    def __init__(self, size: int, name: str) -> None:
        self._q: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(max(1, size))
        ]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except Exception as exc:
                fut.set_exception(exc)
            except BaseException as exc:  # sys.exit() in user code must not stop the host's event loop
                fut.set_exception(RuntimeError(f"function code raised {type(exc).__name__}: {exc}"))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self._q.put((fut, fn, args))
        return fut

    def shutdown(self) -> None:
        """Ask idle threads to exit; busy ones finish their call and exit (daemons never block exit)."""
        for _ in self._threads:
            self._q.put(None)
