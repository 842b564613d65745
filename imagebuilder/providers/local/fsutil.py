"""File helpers the local provider uses in several places, written once: a file's sha256 (plain and
remembered per path/size/mtime for this process) and an exclusive lock file shared by threads and
processes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path) -> str:
    """The sha256 of a file's content, read in chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_cached(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process (big files get copied to
    several stores in a row)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_file(path)
    return _SHA_MEMO[key]


def remember_sha256(path: Path, digest: str) -> None:
    """Record a digest computed elsewhere (e.g. while the file was written) for `sha256_cached`."""
    st = path.stat()
    _SHA_MEMO[(str(path.resolve()), st.st_size, st.st_mtime_ns)] = digest


@contextlib.contextmanager
def locked_file(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (created): serializes threads and processes alike."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
