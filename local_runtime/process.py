"""The host as a child process, for tests, benchmarks and examples: `python -m local_runtime start APP
--port 0 --state-dir DIR [args]`, its output collected line by line (and copied to a log file when asked),
waits for `Listening on URL` / `Ready`, the default function key from the state dir, and a stop that
escalates from a signal to SIGKILL. With `new_session` the host gets its own process group, and `stop`
and `kill9` reach everything it started (Azurite, sandboxes). Errors: `HostProcessError` (the host did not
print what was awaited; the message carries its output).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

LISTENING = r"^Listening on (http://\S+)$"
READY = r"^Ready$"


class HostProcessError(AssertionError):
    """The host exited or stayed silent before printing what was awaited (tests see an AssertionError)."""


class HostProcess:
    """One `python -m local_runtime start` child. `lines` holds its output so far; `url` is set once it
    listens; `start()` returns self, so `HostProcess(...).start()` reads naturally."""

    def __init__(
        self,
        app_dir: Path,
        state_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        cwd: Path | None = None,
        pythonpath: Path | None = None,
        log_path: Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.app_dir = Path(app_dir)
        self.state_dir = Path(state_dir)
        self.env = dict(env or {})
        self.args = list(args)
        self.cwd = cwd or self.app_dir
        self.pythonpath = pythonpath
        self.log_path = log_path
        self.new_session = new_session
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.url = ""
        self._reader: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self, *, wait: str | None = LISTENING, timeout: float = 120.0) -> HostProcess:
        """Start the host; unless `wait` is None, wait for that line (default: `Listening on`), and for
        `Ready` too when `wait` is READY. A host that does not get there is stopped and reported."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.lines, self.url = [], ""  # a restart (same state dir) reads only the new process's output
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        if self.pythonpath is not None:
            paths = (self.env.get("PYTHONPATH"), str(self.pythonpath))
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        argv = [sys.executable, "-m", "local_runtime", "start", str(self.app_dir), "--port", "0"]
        argv += ["--state-dir", str(self.state_dir), *self.args]
        self.proc = subprocess.Popen(
            argv,
            cwd=self.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=self.new_session,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait is not None:
            try:
                self.url = self.wait_for_line(LISTENING, timeout).group(1)
                if wait == READY:
                    self.wait_for_line(READY, timeout)
            except HostProcessError:
                self.stop()
                raise
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        log: TextIO | None = self.log_path.open("a") if self.log_path is not None else None
        try:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if log is not None:
                    log.write(line)
                    log.flush()
        finally:
            if log is not None:
                log.close()

    def wait_for_line(self, pattern: str, timeout: float = 60.0, start: int = 0) -> re.Match[str]:
        """The first output line (from index `start`) matching `pattern`, waiting up to `timeout`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[start:]:
                m = rx.search(line)
                if m:
                    return m
            if self.proc is None or (self.proc.poll() is not None and not self._alive_reader()):
                break
            time.sleep(0.05)
        raise HostProcessError(f"the host did not print {pattern!r}; its output:\n{self.output}")

    def _alive_reader(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Send `sig` (to the process group with `new_session`), wait up to `timeout`, then SIGKILL;
        returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(10)
        if self.new_session:  # whatever the group left behind (a crash leaves orphans)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(5)
        return proc.returncode

    def kill9(self) -> None:
        """A crash: SIGKILL, no chance to clean up."""
        assert self.proc is not None
        self._signal(signal.SIGKILL)
        self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            if self.new_session:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)

    # ---- what it printed and keeps ----------------------------------------------------------------
    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.lines[-lines:])

    @property
    def keys(self) -> dict[str, Any]:
        """The host's keys.json (master key and function keys)."""
        data: dict[str, Any] = json.loads((self.state_dir / "keys.json").read_text())
        return data

    @property
    def key(self) -> str:
        """The default function key."""
        return str(self.keys["functionKeys"]["default"])
