"""File helpers the local provider uses in several places, written once: a file's sha256 (the holes of a
sparse file are not read; plain, and remembered per path/size/mtime for this process) and an exclusive
lock file shared by threads and processes."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path) -> str:
    """The sha256 of a file's content. A sparse file's holes are not read: they hash as the zeros they
    read as (SEEK_DATA/SEEK_HOLE), so a mostly empty disk image costs the hashing, not the reading."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    zeros = memoryview(bytes(CHUNK))
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left (or no SEEK_DATA here: read it all)
                data = size if _has_seek_data(fd) else pos
            while pos < data:  # a hole: zeros, not read
                n = min(CHUNK, data - pos)
                h.update(zeros[:n])
                pos += n
            if pos >= size:
                break
            try:
                hole = os.lseek(fd, pos, os.SEEK_HOLE)
            except OSError:
                hole = size
            os.lseek(fd, pos, os.SEEK_SET)
            while pos < hole:
                n = os.readv(fd, [view[: min(CHUNK, hole - pos)]])
                if n <= 0:  # the file shrank under us: hash what is there
                    return _sha256_read(path)
                h.update(view[:n])
                pos += n
        return h.hexdigest()
    finally:
        os.close(fd)


def _has_seek_data(fd: int) -> bool:
    try:
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        return exc.errno == errno.ENXIO  # supported (a file that is all hole); EINVAL: not supported
    return True


def _sha256_read(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


_SHA_MEMO: dict[tuple[str, int, int], str] = {}
_SHA_XATTR = "user.imagebuilder.sha256"


def sha256_cached(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime): in this process, and on the file itself (an
    extended attribute naming the size and mtime it was computed for, so another process, e.g. the next
    activity's worker, trusts it too; any write to the file changes its mtime and voids it)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = _sha256_xattr(path, st) or sha256_file(path)
    return _SHA_MEMO[key]


def remember_sha256(path: Path, digest: str) -> None:
    """Record a digest computed elsewhere (e.g. while the file was written) for `sha256_cached`."""
    st = path.stat()
    _SHA_MEMO[(str(path.resolve()), st.st_size, st.st_mtime_ns)] = digest
    with contextlib.suppress(OSError):  # a filesystem without user xattrs: this process still knows
        os.setxattr(path, _SHA_XATTR, f"{st.st_size}:{st.st_mtime_ns}:{digest}".encode())


def _sha256_xattr(path: Path, st: os.stat_result) -> str | None:
    try:
        size, mtime, digest = os.getxattr(path, _SHA_XATTR).decode().split(":")
        if (int(size), int(mtime)) != (st.st_size, st.st_mtime_ns) or len(digest) != 64:
            return None
    except (OSError, ValueError):
        return None
    return digest


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


def walk_stat(
    root: Path, *, same_dev: bool = False, stop: Callable[[], bool] | None = None
) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below `root` with its lstat (never following symlinks), depth first, in no set order;
    unreadable folders and entries are skipped. `same_dev`: do not enter other filesystems (submounts).
    `stop()`: checked per folder; true ends the walk."""
    try:
        dev = root.lstat().st_dev
    except OSError:
        return
    stack = [str(root)]
    while stack and not (stop is not None and stop()):
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if same_dev and st.st_dev != dev:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                yield entry.path, st


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, end) of each data range of an open file (SEEK_DATA/SEEK_HOLE): its holes are skipped."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        end = os.lseek(fd, data, os.SEEK_HOLE)
        yield data, end
        pos = end


def copy_sparse_digest(src: Path, dst: Path) -> str:
    """Copy `src` to a new file `dst` (holes kept) in one pass that also returns a digest of what was
    copied: sha256 over the size and each data range's offset, length and bytes. Two files with the same
    digest read the same. Reading runs ahead of hashing and writing (two buffers, a second thread: both
    release the GIL), so the copy costs about the longer of the two, not their sum."""
    h = hashlib.sha256()
    bufs = [bytearray(CHUNK), bytearray(CHUNK)]
    fin = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        size = os.fstat(fin).st_size
        with contextlib.suppress(OSError):
            os.posix_fadvise(fin, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        h.update(f"size\0{size}\0".encode())
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                busy: list[concurrent.futures.Future[None] | None] = [None, None]

                def consume(header: bytes | None, view: memoryview, pos: int) -> None:
                    if header is not None:
                        h.update(header)
                    h.update(view)
                    os.pwrite(fout, view, pos)

                i = 0
                for data, end in data_extents(fin, size):
                    header: bytes | None = f"data\0{data}\0{end - data}\0".encode()
                    pos = data
                    while pos < end:
                        pending = busy[i]
                        if pending is not None:
                            pending.result()  # the buffer is free again
                        view = memoryview(bufs[i])
                        n = os.preadv(fin, [view[: min(CHUNK, end - pos)]], pos)
                        if n <= 0:
                            raise OSError(errno.EIO, f"{src} shrank while it was copied")
                        busy[i] = pool.submit(consume, header, view[:n], pos)
                        header = None
                        pos += n
                        i ^= 1
                for pending in busy:
                    if pending is not None:
                        pending.result()
            os.ftruncate(fout, size)
        finally:
            os.close(fout)
    finally:
        os.close(fin)
    return h.hexdigest()
