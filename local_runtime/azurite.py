"""Azurite, the Azure Storage emulator, started from the project's node_modules and stopped cleanly.

`Azurite` owns one emulator process (blob, queue and table services on given or free ports, data under a
folder); `start_azurite(...)` is the context manager tests and other hosts use; `resolve_storage(...)`
implements the host's `UseDevelopmentStorage=true` rule (reuse what listens on 10000-10002, else start it).

Exceptions:
    AzuriteError            Azurite could not be found, started, or reached (the message says what to do)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("local_runtime.azurite")

ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEFAULT_PORTS = (10000, 10001, 10002)
DEV_STORAGE = "UseDevelopmentStorage=true"
REPO_ROOT = Path(__file__).resolve().parent.parent


class AzuriteError(Exception):
    """Azurite is missing, failed to start, or did not open its ports."""


def connection_string(host: str, blob_port: int, queue_port: int, table_port: int) -> str:
    """The explicit connection string for devstoreaccount1 on the given ports."""
    return (
        "DefaultEndpointsProtocol=http;"
        f"AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint=http://{host}:{blob_port}/{ACCOUNT_NAME};"
        f"QueueEndpoint=http://{host}:{queue_port}/{ACCOUNT_NAME};"
        f"TableEndpoint=http://{host}:{table_port}/{ACCOUNT_NAME};"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bind 0 and let the kernel pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies, so a kill -9'd host leaves no Azurite."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def find_azurite(*starts: Path) -> Path:
    """node_modules/.bin/azurite, looked up upward from each start folder and from the repository."""
    seen: set[Path] = set()
    for start in (*starts, REPO_ROOT, Path.cwd()):
        for folder in (start.resolve(), *start.resolve().parents):
            if folder in seen:
                continue
            seen.add(folder)
            candidate = folder / "node_modules" / ".bin" / "azurite"
            if candidate.exists():
                return candidate
    raise AzuriteError(
        "Azurite is not installed: no node_modules/.bin/azurite above "
        f"{', '.join(str(s) for s in starts) or REPO_ROOT}; run `make setup` (npm ci) in the repository"
    )


@dataclass
class Azurite:
    """One Azurite process with blob/queue/table on `host` and data under `location`.

    Ports left as 0 are chosen free. `start()` waits until all three ports accept connections;
    `stop()` terminates the whole process group (also registered with atexit). With `die_with_parent`
    (Linux) Azurite also gets SIGTERM if the thread that started it dies, even by kill -9.
    """

    location: Path
    blob_port: int = 0
    queue_port: int = 0
    table_port: int = 0
    host: str = "127.0.0.1"
    search_from: Path | None = None
    startup_timeout: float = 30.0
    die_with_parent: bool = True
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return connection_string(self.host, self.blob_port, self.queue_port, self.table_port)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> str:
        """Start Azurite and return its connection string once every port accepts connections."""
        exe = find_azurite(*([self.search_from] if self.search_from else []))
        self.blob_port = self.blob_port or free_port(self.host)
        self.queue_port = self.queue_port or free_port(self.host)
        self.table_port = self.table_port or free_port(self.host)
        self.location.mkdir(parents=True, exist_ok=True)
        argv = [
            str(exe),
            "--blobHost",
            self.host,
            "--blobPort",
            str(self.blob_port),
            "--queueHost",
            self.host,
            "--queuePort",
            str(self.queue_port),
            "--tableHost",
            self.host,
            "--tablePort",
            str(self.table_port),
            "--location",
            str(self.location),
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--disableTelemetry",
        ]
        log.debug("starting Azurite: %s", " ".join(argv))
        debug_log = self.location / "azurite.out"
        with debug_log.open("ab") as out:
            self._proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startup_timeout
        ports = (self.blob_port, self.queue_port, self.table_port)
        while not all(port_open(p, self.host) for p in ports):
            code = self._proc.poll()
            if code is not None:
                tail = debug_log.read_text(errors="replace")[-2000:]
                self._proc = None
                raise AzuriteError(
                    f"Azurite exited with code {code} before listening on {ports}; output:\n{tail}\n"
                    "hint: another process may hold one of the ports, or run `make setup` (npm ci)"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise AzuriteError(
                    f"Azurite did not open ports {ports} within {self.startup_timeout:.0f}s; see {debug_log}"
                )
            time.sleep(0.05)
        log.info(
            "Azurite started (pid %d): blob %d, queue %d, table %d, data in %s",
            self._proc.pid,
            *ports,
            self.location,
        )
        return self.connection_string

    def stop(self, grace: float = 10.0) -> None:
        """Terminate Azurite (its whole process group) and wait for it; idempotent.

        With telemetry disabled Azurite closes in well under a second and saves its metadata; after
        `grace` seconds it is killed (its metadata is autosaved every 5 s, so little can be lost).
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.info("Azurite stopped")


@contextlib.contextmanager
def start_azurite(
    location: Path, *, blob_port: int = 0, queue_port: int = 0, table_port: int = 0
) -> Iterator[Azurite]:
    """A private Azurite on free ports (unless given) with data under `location`; stopped on exit.

    Use `az.connection_string` for the storage clients.
    """
    az = Azurite(location=Path(location), blob_port=blob_port, queue_port=queue_port, table_port=table_port)
    az.start()
    try:
        yield az
    finally:
        az.stop()


def is_dev_storage(value: str | None) -> bool:
    """True for the development-storage shorthand (`UseDevelopmentStorage=true`)."""
    return (value or "").replace(" ", "").rstrip(";").lower() == DEV_STORAGE.lower()


def resolve_storage(
    value: str | None, state_dir: Path, *, private: bool = False, search_from: Path | None = None
) -> tuple[str | None, Azurite | None]:
    """Apply the host rule for `AzureWebJobsStorage`; returns (explicit connection string, started Azurite).

    - not development storage: returned unchanged, nothing started;
    - development storage and `private`: Azurite on free ports with data under the state dir;
    - development storage: reuse 10000-10002 if they already listen, else start Azurite on them.
    """
    if not is_dev_storage(value):
        return value, None
    location = state_dir / "azurite"
    if private:
        az = Azurite(location=location, search_from=search_from)
        return az.start(), az
    if all(port_open(p) for p in DEFAULT_PORTS):
        log.info("Using the storage emulator already listening on ports 10000-10002")
        return connection_string("127.0.0.1", *DEFAULT_PORTS), None
    busy = [p for p in DEFAULT_PORTS if port_open(p)]
    if busy:
        raise AzuriteError(
            f"ports {busy} are in use but not all of 10000-10002 answer; stop that process, or start "
            "with --private-storage to run Azurite on free ports"
        )
    b, q, t = DEFAULT_PORTS
    az = Azurite(location=location, blob_port=b, queue_port=q, table_port=t, search_from=search_from)
    return az.start(), az
