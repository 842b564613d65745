"""One host per state directory: an exclusive `flock` on `<state>/host.lock` held for the host's lifetime.

Two hosts on one state directory would run every activity twice and collide on history inserts. The
lock file names the holder's pid so the second host can say who holds it. The kernel drops the lock when
the holder dies (kill -9 included), so a crashed host never blocks the next one. The descriptor is not
inheritable, so Azurite and worker processes never keep the lock alive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

LOCK_FILE = "host.lock"


class StateDirBusy(Exception):
    """Another live host holds the state directory's lock."""


class StateLock:
    """`acquire()` takes the lock or raises StateDirBusy naming the holder; `release()` gives it back."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StateDirBusy(f"cannot lock {self.path}: {exc.strerror}") from exc
            who = f"pid {holder}" if holder else "another process"
            raise StateDirBusy(
                f"state directory {self.path.parent} is in use by another local_runtime host ({who}); "
                "stop that host or pass another --state-dir"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing the only descriptor drops the flock
        self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
