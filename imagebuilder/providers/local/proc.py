"""The one subprocess choke point of the local provider: every external command goes through `run()`.

`run(argv, *, log=None, timeout=None, input=None, env=None, cwd=None, check=True) -> Completed` logs the
exact argv (``$ cmd args``) to the `LogSink`, streams the command's output to it line by line while it
runs, kills the whole process group on timeout (or on any exception), and on failure raises an error that
carries the command, its exit code and the tail of its output. Argv is data, never a shell string.
`interactive(argv) -> int` runs a command on the caller's terminal (stdin/stdout/stderr inherited: a
debugging shell, never a build step). `spawn(argv, *, log=None, pass_fds=()) -> Background` starts a
helper that runs beside other commands
(e.g. slirp4netns for a sandbox's network); `Background.stop()` kills its process group.

Exceptions::

    ProviderError (providers.base)
    ├── CommandError             a command exited non-zero (argv, returncode, tail)
    │   └── CommandTimeoutError  a command ran past its timeout; its process group was killed
    └── ProviderConfigError
        └── ToolMissingError     the program is not installed (hint: scripts/setup.sh)
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from imagebuilder.providers.base import LogSink, ProviderConfigError, ProviderError

TAIL_LINES = 25
KILL_GRACE_SECONDS = 3.0

__all__ = [
    "Background",
    "CommandError",
    "CommandTimeoutError",
    "Completed",
    "ToolMissingError",
    "format_argv",
    "require_tools",
    "run",
    "spawn",
]


@dataclass(frozen=True)
class Completed:
    """A finished command. `stdout`/`stderr` are decoded text (invalid UTF-8 replaced);
    `stdout_bytes` keeps the raw bytes for binary output (e.g. ``debugfs -R 'cat …'``)."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration: float
    stdout_bytes: bytes = field(default=b"", repr=False)

    @property
    def tail(self) -> list[str]:
        """The last lines of the combined output (stdout then stderr)."""
        return _tail(self.stdout, self.stderr)


class CommandError(ProviderError):
    """A command failed: names the command, its exit code and the last lines of its output."""

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int,
        tail: list[str],
        *,
        duration: float = 0.0,
        what: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.tail = tail
        self.duration = duration
        head = what or f"command failed with exit code {returncode}"
        text = f"{head}: {format_argv(argv)}"
        if tail:
            text += "\n" + "\n".join(f"  | {line}" for line in tail)
        super().__init__(text, hint=hint)


class CommandTimeoutError(CommandError):
    """A command ran longer than its timeout; its whole process group was killed."""


class ToolMissingError(ProviderConfigError):
    """A program the local provider needs is not installed."""


def format_argv(argv: Sequence[str]) -> str:
    """The argv as one copy-pasteable shell line (for logs and errors only, never executed)."""
    return shlex.join(str(a) for a in argv)


def require_tools(*names: str) -> None:
    """Raise `ToolMissingError` naming every program in `names` that is not on PATH."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise ToolMissingError(
            f"the local provider needs {', '.join(missing)}, not found on PATH",
            hint="run scripts/setup.sh as root to install the Debian packages it lists",
        )


def _tail(stdout: str, stderr: str, n: int = TAIL_LINES) -> list[str]:
    lines = [ln for ln in (stdout.splitlines() + stderr.splitlines()) if ln.strip()]
    return lines[-n:]


def _pump(
    stream: IO[bytes], sink: list[bytes], log: LogSink | None, prefix: str, redact: Sequence[str]
) -> None:
    for chunk in iter(stream.readline, b""):
        sink.append(chunk)
        if log is not None:
            text = chunk.decode("utf-8", "replace").rstrip("\n")
            log.write(f"{prefix}{_redact(text, redact)}\n")
    stream.close()


def _feed(stream: IO[bytes] | None, data: bytes) -> None:
    if stream is None:
        return
    with contextlib.suppress(BrokenPipeError, OSError, ValueError):
        stream.write(data)
    with contextlib.suppress(BrokenPipeError, OSError, ValueError):
        stream.close()


_SECRET_PATTERNS = (
    re.compile(r"([?&](?:sig|signature|code)=)[^&\s#\"'<>]+", re.IGNORECASE),
    re.compile(r"((?:AccountKey|SharedAccessKey)=)[^;\s\"'<>]+", re.IGNORECASE),
)


def _redact(text: str, secrets: Sequence[str]) -> str:
    """Mask the given secrets, and always SAS signatures, `code=` keys and account keys."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + "<redacted>", text)
    return text


def wait_exit(proc: subprocess.Popen[bytes], timeout: float | None) -> int:
    """`proc.wait(timeout)`, woken the moment the process exits: Popen.wait with a timeout polls with
    sleeps of up to 50 ms, which a build of many short commands pays every time. A pidfd (Linux 5.3)
    becomes readable when the process exits; without one, Popen.wait as usual."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd, or the process is already reaped
        return proc.wait(timeout=timeout)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(None if timeout is None else max(0.0, timeout) * 1000):
            raise subprocess.TimeoutExpired(proc.args, timeout or 0)
    finally:
        os.close(fd)
    return proc.wait()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            # The leader is gone; make sure no member of its group survives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def run(
    argv: Sequence[str | Path],
    *,
    log: LogSink | None = None,
    timeout: float | None = None,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    check: bool = True,
    echo_output: bool = True,
    redact: Sequence[str] = (),
    pass_fds: Sequence[int] = (),
    drain_seconds: float = 5.0,
    die_with_parent: bool = False,
) -> Completed:
    """Run `argv` (a list, never a shell string) and wait for it.

    - `log`: the exact argv is written as ``$ …``, then every output line as it arrives (unless
      `echo_output=False`, for binary or bulky output); strings in `redact` are masked in the log.
    - `timeout` (seconds): on expiry the command's whole process group is killed (SIGTERM, then
      SIGKILL) and `CommandTimeoutError` is raised (even with `check=False`).
    - `input`: bytes or text fed to stdin (stdin is /dev/null otherwise).
    - `env`: entries added to (overriding) the current environment; use ``env -i`` in argv for a clean one.
    - `check`: raise `CommandError` on a non-zero exit; with `check=False` the caller reads `returncode`.
    - `pass_fds`: descriptors the command inherits (as in `subprocess.Popen`).
    - `die_with_parent`: the command is killed (SIGKILL) if this process dies first, e.g. a copy into a
      temporary folder that a later sweep removes once its writer is gone (kill -9).
    - `drain_seconds`: how long to keep relaying output after the command ended (a daemon that escaped
      may hold the pipes open); a caller whose command cannot leave processes behind (the sandbox: pid
      namespace) gives more, so a slow log sink still gets every line before run() returns.
    """
    args = [str(a) for a in argv]
    if not args:
        raise ValueError("run() needs a non-empty argv")
    if log is not None:
        log.write(f"$ {_redact(format_argv(args), redact)}\n")
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    data = input.encode() if isinstance(input, str) else input
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    except FileNotFoundError as exc:
        raise ToolMissingError(
            f"cannot run {format_argv(args)}: {args[0]} is not installed",
            hint="run scripts/setup.sh as root to install the Debian packages it lists",
        ) from exc
    out: list[bytes] = []
    err: list[bytes] = []
    pump_log = log if echo_output else None
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(proc.stdout, out, pump_log, "", redact), daemon=True),
        threading.Thread(target=_pump, args=(proc.stderr, err, pump_log, "", redact), daemon=True),
    ]
    for t in pumps:
        t.start()
    timed_out = False
    try:
        if data is not None:
            # A thread, so that a command that never reads its stdin cannot outlast the timeout.
            feeder = threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True)
            feeder.start()
        try:
            wait_exit(proc, timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        for t in pumps:
            # A daemon that escaped the process group may hold the pipes open: do not wait forever.
            t.join(timeout=drain_seconds)
    duration = time.monotonic() - start
    stdout_bytes = b"".join(out)
    stdout = stdout_bytes.decode("utf-8", "replace")
    stderr = b"".join(err).decode("utf-8", "replace")
    done = Completed(args, proc.returncode, stdout, stderr, duration, stdout_bytes)
    tail = [_redact(line, redact) for line in done.tail]
    shown = [_redact(a, redact) for a in args]
    if timed_out:
        if log is not None:
            log.write(f"! timed out after {timeout} s, process group killed: {args[0]}\n")
        raise CommandTimeoutError(
            shown,
            proc.returncode,
            tail,
            duration=duration,
            what=f"command timed out after {timeout} s (process group killed)",
        )
    if check and proc.returncode != 0:
        if log is not None:
            log.write(f"! exit code {proc.returncode}: {args[0]}\n")
        raise CommandError(shown, proc.returncode, tail, duration=duration)
    return done


def interactive(argv: Sequence[str | Path], *, pass_fds: Sequence[int] = ()) -> int:
    """Run `argv` on the caller's terminal and return its exit code (for `aib shell`: the user drives it;
    nothing is captured or logged)."""
    args = [str(a) for a in argv]
    try:
        return subprocess.call(args, pass_fds=tuple(pass_fds))
    except FileNotFoundError as exc:
        raise ToolMissingError(
            f"cannot run {format_argv(args)}: {args[0]} is not installed",
            hint="run scripts/setup.sh as root to install the Debian packages it lists",
        ) from exc


class Background:
    """A helper process started by `spawn`; its output goes to the log; `stop()` ends its process group."""

    def __init__(
        self, popen: subprocess.Popen[bytes], pumps: list[threading.Thread], sink: list[bytes]
    ) -> None:
        self.popen = popen
        self._pumps = pumps
        self._sink = sink

    def output(self) -> str:
        """What the helper printed so far (stdout and stderr)."""
        return b"".join(self._sink).decode("utf-8", "replace")

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> int | None:
        """Kill the process group (SIGTERM, then SIGKILL) and return the exit code."""
        if self.popen.poll() is None:
            _kill_group(self.popen)
        for t in self._pumps:
            t.join(timeout=5.0)
        return self.popen.returncode


def spawn(
    argv: Sequence[str | Path], *, log: LogSink | None = None, pass_fds: Sequence[int] = ()
) -> Background:
    """Start `argv` in the background in its own process group (stdin /dev/null, output to `log`);
    the caller must `stop()` it. Raises `ToolMissingError` when the program is not installed."""
    args = [str(a) for a in argv]
    if log is not None:
        log.write(f"$ {format_argv(args)} &\n")
    try:
        popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError as exc:
        raise ToolMissingError(
            f"cannot run {format_argv(args)}: {args[0]} is not installed",
            hint="run scripts/setup.sh as root to install the Debian packages it lists",
        ) from exc
    assert popen.stdout is not None
    sink: list[bytes] = []
    pump = threading.Thread(target=_pump, args=(popen.stdout, sink, log, f"[{args[0]}] ", ()), daemon=True)
    pump.start()
    return Background(popen, [pump], sink)
