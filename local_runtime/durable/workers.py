"""Worker processes for durable user code, as the Functions host keeps user code in language workers.

`WorkerPool` starts `FUNCTIONS_WORKER_PROCESS_COUNT` (1-10, default 1) `local_runtime.durable.worker`
processes and sends each call to the one with the fewest calls in flight. `functionTimeout` is enforced
here, as the host does: the late call fails with `FunctionTimeout` ("Timeout value of 00:00:05 was exceeded
by function: Functions.<name>") and its worker is recycled (killed and replaced), which fails the other
calls it was running with `WorkerDied`; so does a worker that crashes or is killed. Callers retry what
died (an activity runs again, at least once, as on Azure when a worker dies).

    Exception
    ├── WorkerError       a worker could not start (the app failed to import there)
    ├── WorkerDied        the worker running a call exited (crash, kill, recycling) before answering
    └── FunctionTimeout   the call outlived functionTimeout; its worker was recycled
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import local_runtime
from local_runtime.invoke import timespan

log = logging.getLogger("local_runtime.durable")
MAX_PROCESSES = 10  # FUNCTIONS_WORKER_PROCESS_COUNT's upper bound on Azure
START_TIMEOUT = 120.0


class WorkerError(Exception):
    """A worker process could not start; the message says why (an import error of the app, say)."""


class WorkerDied(Exception):
    """The worker running the call exited before answering it."""


class FunctionTimeout(Exception):
    """The call ran longer than functionTimeout."""


def worker_count(settings: Mapping[str, str]) -> int:
    raw = settings.get("FUNCTIONS_WORKER_PROCESS_COUNT") or "1"
    try:
        n = int(raw)
    except ValueError as exc:
        raise WorkerError(
            f"FUNCTIONS_WORKER_PROCESS_COUNT must be a number from 1 to 10, not {raw!r}"
        ) from exc
    if not 1 <= n <= MAX_PROCESSES:
        raise WorkerError(f"FUNCTIONS_WORKER_PROCESS_COUNT must be from 1 to 10, not {n}")
    return n


class _Process:
    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        parent, child = socket.socketpair()
        self.sock = parent  # kept to shut down: that ends a blocked recv() on both sides
        self.conn = Connection(os.dup(parent.fileno()))
        root = str(Path(local_runtime.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        argv = [
            sys.executable,
            "-m",
            "local_runtime.durable.worker",
            str(child.fileno()),
            str(pool.app_dir),
            pool.script,
            json.dumps(pool.log_levels),
        ]
        self.proc = subprocess.Popen(argv, pass_fds=[child.fileno()], env=env)
        child.close()
        self.pid = self.proc.pid
        self.inflight: dict[int, tuple[asyncio.Future[Any], str]] = {}
        self.ready: asyncio.Future[None] = pool.running_loop().create_future()
        self.dead = False
        self.reader = threading.Thread(target=self._read, name=f"worker-{self.pid}", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        loop = self.pool.running_loop()
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                break
            loop.call_soon_threadsafe(self._deliver, msg)
        self.proc.wait()
        loop.call_soon_threadsafe(self.pool._died, self)

    def _deliver(self, msg: tuple[Any, ...]) -> None:
        if msg[0] == "ready":
            if not self.ready.done():
                self.ready.set_result(None)
            return
        if msg[0] == "failed":
            if not self.ready.done():
                self.ready.set_exception(WorkerError(f"the worker process could not load the app: {msg[1]}"))
            return
        call_id, ok, value = msg
        entry = self.inflight.pop(call_id, None)
        if entry is None or entry[0].done():
            return
        entry[0].set_result((ok, value))

    def send(self, message: tuple[Any, ...]) -> None:
        self.conn.send(message)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass


class WorkerPool:
    """`await start()`, then `await call(kind, name, payload)` -> (ok, value); `await stop()`."""

    def __init__(
        self,
        *,
        app_dir: Path,
        script: str,
        count: int = 1,
        function_timeout: float | None = None,
        log_levels: Mapping[str, str] | None = None,
    ) -> None:
        self.app_dir = app_dir
        self.script = script
        self.count = max(0, min(MAX_PROCESSES, count))  # 0: no durable functions to run
        self.function_timeout = function_timeout
        self.log_levels = dict(log_levels or {})
        self.procs: list[_Process] = []
        self.ids = itertools.count()
        self.stopping = False
        self.recycled = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._available: asyncio.Event | None = None

    def running_loop(self) -> asyncio.AbstractEventLoop:
        assert self.loop is not None, "WorkerPool.start() first"
        return self.loop

    @property
    def available(self) -> asyncio.Event:
        assert self._available is not None, "WorkerPool.start() first"
        return self._available

    async def start(self) -> None:
        if self.loop is not None:
            return  # started already (the host starts it before the durable engine would)
        self.loop = asyncio.get_running_loop()
        self._available = asyncio.Event()
        for _ in range(self.count):
            await self._spawn()

    async def _spawn(self) -> None:
        p = _Process(self)
        try:
            await asyncio.wait_for(asyncio.shield(p.ready), START_TIMEOUT)
        except TimeoutError as exc:
            p.kill()
            raise WorkerError(f"the worker process did not start within {START_TIMEOUT:.0f} s") from exc
        except WorkerError:
            p.kill()
            raise
        if p.dead:
            raise WorkerError("the worker process exited while starting")
        self.procs.append(p)
        self.available.set()
        log.debug("durable: worker process %d ready", p.pid)

    def _died(self, p: _Process) -> None:
        p.dead = True
        if not p.ready.done():
            p.ready.set_exception(WorkerError(f"the worker process exited with code {p.proc.returncode}"))
        if p in self.procs:
            self.procs.remove(p)
        lost, p.inflight = p.inflight, {}
        for fut, name in lost.values():
            if not fut.done():
                fut.set_exception(WorkerDied(f"the worker process running Functions.{name} exited"))
        if self.stopping:
            return
        log.warning(
            "durable: worker process %d exited (code %s); %d call(s) it ran will be retried; starting one",
            p.pid,
            p.proc.returncode,
            len(lost),
        )
        if not self.procs:
            self.available.clear()
        self.running_loop().create_task(self._respawn())

    async def _respawn(self) -> None:
        while not self.stopping:
            try:
                await self._spawn()
                return
            except WorkerError:
                log.exception("durable: restarting a worker process failed; trying again in 5 s")
                await asyncio.sleep(5)

    async def call(self, kind: str, name: str, payload: Any) -> tuple[bool, Any]:
        """Run `name` in a worker; (True, value) or (False, ("failure", reason, details) | ("error", text)).
        Raises WorkerDied or FunctionTimeout."""
        while not self.procs:
            if self.stopping:
                raise WorkerDied("the host is stopping")
            await self.available.wait()
        p = min(self.procs, key=lambda w: len(w.inflight))
        call_id = next(self.ids)
        fut: asyncio.Future[tuple[bool, Any]] = self.running_loop().create_future()
        p.inflight[call_id] = (fut, name)
        try:
            p.send((call_id, kind, name, payload))
        except (OSError, ValueError) as exc:
            p.inflight.pop(call_id, None)
            raise WorkerDied(f"the worker process for Functions.{name} is gone: {exc}") from exc
        if not self.function_timeout:
            return await fut
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.function_timeout)
        except TimeoutError:
            p.inflight.pop(call_id, None)
            limit = timespan(self.function_timeout)
            log.error(
                "Timeout value of %s exceeded by function 'Functions.%s' (Id: '%d'). Initiating "
                "cancellation; recycling its worker process %d",
                limit,
                name,
                call_id,
                p.pid,
            )
            self.recycled += 1
            if p in self.procs:  # no new call goes to it while it dies; _died starts its successor
                self.procs.remove(p)
                if not self.procs:
                    self.available.clear()
            p.kill()
            raise FunctionTimeout(
                f"Timeout value of {limit} was exceeded by function: Functions.{name}"
            ) from None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        procs, self.procs = list(self.procs), []
        for p in procs:
            p.close()  # the worker sees EOF and exits at once
        for p in procs:
            try:
                await asyncio.wait_for(asyncio.to_thread(p.proc.wait), 5)
            except TimeoutError:
                p.kill()
