"""The step cache: each customize step's filesystem result (its overlay upper layer: files, whiteouts as
0/0 character devices, opaque directories as `trusted.overlay.opaque` xattrs) kept under
`cache_dir/steps/<id>/`, keyed by a content address, so that a rebuild reuses the longest cached prefix of
its steps and runs only the rest.

Step ids (`base_id`, `step_id`): sha256 over the parent's id (the first step's parent: the resolved source
and the provider's base recipe), the step's canonical JSON and the sha256 of every artifact it reads.
Steps that reach the network are cached like any other (as mkosi and container builders do).

An entry is complete or absent: it is written under `.tmp-<id>-<pid>-<nonce>/` (the layer hard-linked
when the cache shares the run's filesystem, copied otherwise), its manifest records a digest of the whole
tree (`tree_digest`: names, types, modes, owners, xattrs, link targets, devices, contents), and it is
renamed to its id only then. A lookup re-computes the digest: a truncated or altered entry (or one with
no manifest) is removed and reported, never used. Leftover temporary folders of dead writers (kill -9)
are removed by the next `evict`.

An entry may also hold `disks/`: the disk of the tree ending with that step, kept by earlydisk.py for the
next run with the same prefix (counted in the entry's size, evicted with it).

Settings: IMAGEBUILDER_STEP_CACHE (on/off, default on), IMAGEBUILDER_STEP_CACHE_DIR (default
<cache dir>/steps; on the state directory's filesystem, entries are hard links, not copies),
IMAGEBUILDER_STEP_CACHE_MAX_GB (default 10): least recently used entries are evicted after each store
until the cache fits. A failing store (full
disk, read-only cache) is a warning; the build continues uncached.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuilder.providers.base import LogSink, ProviderError
from imagebuilder.providers.local import proc

CACHE_SETTING = "IMAGEBUILDER_STEP_CACHE"
CAP_SETTING = "IMAGEBUILDER_STEP_CACHE_MAX_GB"
DIR_SETTING = "IMAGEBUILDER_STEP_CACHE_DIR"
DEFAULT_CAP_GB = 10.0
FORMAT = "imagebuilder-step-cache/1"
MANIFEST = "manifest.json"
LAYER = "layer"
USED = "last-used"
DISKS = "disks"  # disks of the prefix ending with this step, kept by earlydisk.py (counted in the size)
CHUNK = 1024 * 1024


def canonical_json(value: Any) -> str:
    """The one JSON spelling of a value: sorted keys, no spaces, UTF-8 as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def base_id(source: Mapping[str, Any], recipe: Mapping[str, Any]) -> str:
    """The parent id of the first step: the resolved source (type, id, exact version, digests) and
    what the provider builds it from and how (base tarball identity, network on/off)."""
    text = canonical_json({"format": FORMAT, "source": dict(source), "recipe": dict(recipe)})
    return hashlib.sha256(text.encode()).hexdigest()


def step_id(parent: str, step: Mapping[str, Any], artifact_sha256: Sequence[str]) -> str:
    """sha256 over the parent step's id, the step's canonical JSON and the sha256 of every artifact it
    reads (in the order the step names them)."""
    h = hashlib.sha256()
    h.update(f"{FORMAT}\0parent\0{parent}\0step\0".encode())
    h.update(canonical_json(dict(step)).encode())
    for digest in artifact_sha256:
        h.update(f"\0artifact\0{digest}".encode())
    return h.hexdigest()


def step_uris(step: Mapping[str, Any]) -> list[str]:
    """The artifact URIs one customizer reads (scriptUri, sourceUri)."""
    out = []
    for key in ("scriptUri", "sourceUri"):
        uri = step.get(key)
        if isinstance(uri, str) and uri:
            out.append(uri)
    return out


def chain(base: str, steps: Iterable[Mapping[str, Any]], sha256_of: Mapping[str, str]) -> list[str]:
    """The ids of a list of steps, each chained to the previous one. `sha256_of`: artifact URI ->
    sha256 as staged (an artifact missing there hashes as its URI, so the id still changes with it)."""
    ids: list[str] = []
    parent = base
    for step in steps:
        digests = [sha256_of.get(uri) or f"uri:{uri}" for uri in step_uris(step)]
        parent = step_id(parent, step, digests)
        ids.append(parent)
    return ids


# ------------------------------------------------------------------------------------------ tree digest


def tree_digest(root: Path) -> tuple[str, int]:
    """(sha256, bytes) of a layer tree: every entry's relative path, type, mode, owner, xattrs, and per
    type its content, link target or device number (whiteouts are 0/0 character devices). Hard links
    are hashed as what they are: files. `bytes` is the disk use of the distinct inodes."""
    h = hashlib.sha256()
    seen: set[tuple[int, int]] = set()
    used = 0
    root = Path(root)
    for path in _walk(root):
        rel = "." if path == root else str(path.relative_to(root))
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            used += st.st_blocks * 512
        mode = st.st_mode
        h.update(f"\0{rel}\0{stat.S_IFMT(mode):o}\0{stat.S_IMODE(mode):o}\0{st.st_uid}:{st.st_gid}".encode())
        for name, value in _xattrs(path):
            h.update(b"\0x\0" + name.encode() + b"=" + value)
        if stat.S_ISREG(mode):
            h.update(f"\0f\0{st.st_size}\0".encode())
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(CHUNK), b""):
                    h.update(chunk)
        elif stat.S_ISLNK(mode):
            h.update(b"\0l\0" + os.fsencode(os.readlink(path)))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            h.update(f"\0d\0{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}".encode())
    return h.hexdigest(), used


def _walk(root: Path) -> Iterable[Path]:
    """root, then everything below it depth first in sorted order, never following symlinks."""
    yield root
    if not root.is_symlink() and root.is_dir():
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(path)
            else:
                yield path


def _xattrs(path: Path) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        with contextlib.suppress(OSError):
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
    return out


# ------------------------------------------------------------------------------------------ the cache


@dataclass(frozen=True)
class Hit:
    """A verified entry: its id, its layer (read-only use), its size."""

    id: str
    layer: Path
    size: int


def cap_bytes(value: str | None) -> int:
    """IMAGEBUILDER_STEP_CACHE_MAX_GB as bytes (GiB; default 10; a bad value means the default)."""
    try:
        gib = float(value) if value not in (None, "") else DEFAULT_CAP_GB
    except ValueError:
        gib = DEFAULT_CAP_GB
    return int(max(gib, 0.0) * 1024**3)


@dataclass(frozen=True)
class StepCache:
    """The entries under `root` (cache_dir/steps), at most `cap` bytes after each store."""

    root: Path
    cap: int = int(DEFAULT_CAP_GB * 1024**3)

    def entry(self, sid: str) -> Path:
        if len(sid) != 64 or any(c not in "0123456789abcdef" for c in sid):
            raise ValueError(f"not a step id: {sid[:80]!r}")
        return self.root / sid

    # ---- lookup

    def lookup(self, sid: str, log: LogSink | None = None) -> Hit | None:
        """The entry `sid` if it is complete and its digest matches; a damaged entry is removed (and
        said so in `log`), never returned."""
        entry = self.entry(sid)
        manifest = entry / MANIFEST
        if not entry.is_dir():
            return None
        problem = ""
        try:
            meta = json.loads(manifest.read_text())
            if meta.get("format") != FORMAT or meta.get("id") != sid:
                problem = "its manifest does not match"
            else:
                digest, size = tree_digest(entry / LAYER)
                if digest != meta.get("sha256"):
                    problem = f"checksum mismatch (expected {meta.get('sha256')}, found {digest})"
        except FileNotFoundError:
            problem = "it has no manifest or no layer"
        except (OSError, ValueError) as exc:
            problem = f"it cannot be read ({exc})"
        if problem:
            if log is not None:
                log.write(f"[cache] entry {sid} is damaged: {problem}; removed, the step runs again\n")
            self.remove(sid)
            return None
        with contextlib.suppress(OSError):
            (entry / USED).write_text(f"{time.time():.6f}\n")
        return Hit(id=sid, layer=entry / LAYER, size=int(meta.get("size") or size))

    # ---- store

    def store(self, sid: str, layer: Path, *, step: str, log: LogSink | None = None) -> bool:
        """Keep `layer` (a finished, no longer written upper layer) as entry `sid`. False (and a warning
        in `log`) when it could not be written: the build goes on uncached."""
        final = self.entry(sid)
        if (final / MANIFEST).is_file():
            return True
        tmp = self.root / f".tmp-{sid[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            clone_tree(layer, tmp / LAYER)
            digest, size = tree_digest(tmp / LAYER)
            meta = {
                "format": FORMAT,
                "id": sid,
                "step": step,
                "sha256": digest,
                "size": size,
                "created": time.time(),
            }
            _write_synced(tmp / MANIFEST, json.dumps(meta, indent=2))
            (tmp / USED).write_text(f"{time.time():.6f}\n")
            try:
                os.rename(tmp, final)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # another run stored the same step first: keep theirs (or replace a damaged one)
                if self.lookup(sid) is None:
                    os.rename(tmp, final)
        except (OSError, ProviderError) as exc:
            if log is not None:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                log.write(
                    f"[cache] warning: step {step} could not be cached in {self.root} ({reason.strip()}); "
                    "the build continues uncached\n"
                )
            _rmtree(tmp)
            return False
        finally:
            if tmp.exists():
                _rmtree(tmp)
        self.evict(log=log, keep={sid})
        return True

    # ---- eviction

    def entries(self) -> list[tuple[float, int, str]]:
        """(last used, size, id) of every complete entry."""
        out: list[tuple[float, int, str]] = []
        if not self.root.is_dir():
            return out
        for entry in self.root.iterdir():
            if entry.name.startswith("."):
                continue
            try:
                meta = json.loads((entry / MANIFEST).read_text())
                used = float((entry / USED).read_text().strip() or 0)
            except (OSError, ValueError):
                used, meta = 0.0, {}
            out.append((used, int(meta.get("size") or 0) + _bytes_in(entry / DISKS), entry.name))
        return out

    def size(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, *, log: LogSink | None = None, keep: set[str] | None = None) -> list[str]:
        """Remove leftovers of dead writers, then least recently used entries until the total is at
        most the cap (`keep` is removed last). Returns the evicted ids."""
        self.sweep_partial()
        entries = sorted(self.entries(), key=lambda e: (e[2] in (keep or set()), e[0]))
        total = sum(size for _, size, _ in entries)
        evicted = []
        for _, size, sid in entries:
            if total <= self.cap:
                break
            self.remove(sid)
            total -= size
            evicted.append(sid)
        if evicted and log is not None:
            log.write(
                f"[cache] evicted {len(evicted)} least recently used step(s) to stay under "
                f"{self.cap / 1024**3:.2f} GiB (now {total / 1024**2:.1f} MiB)\n"
            )
        return evicted

    def sweep_partial(self) -> list[str]:
        """Temporary folders whose writer is gone (killed mid-write), and half-removed entries."""
        removed: list[str] = []
        if not self.root.is_dir():
            return removed
        for entry in self.root.iterdir():
            name = entry.name
            dead = name.startswith(".del-")
            if name.startswith(".tmp-"):
                parts = name.split("-")
                pid = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else 0
                dead = not _alive(pid)
            if dead:
                _rmtree(entry)
                removed.append(name)
        return removed

    def remove(self, sid: str) -> None:
        """Rename the entry away first (so no reader sees it half removed), then delete it."""
        entry = self.entry(sid)
        if not entry.exists():
            return
        doomed = self.root / f".del-{sid[:16]}-{secrets.token_hex(4)}"
        try:
            os.rename(entry, doomed)
        except OSError:
            doomed = entry
        _rmtree(doomed)


def _bytes_in(folder: Path) -> int:
    """Disk use of the files directly in `folder` (0 when there is none)."""
    try:
        with os.scandir(folder) as it:
            return sum(
                e.stat(follow_symlinks=False).st_blocks * 512 for e in it if e.is_file(follow_symlinks=False)
            )
    except OSError:
        return 0


def clone_tree(src: Path, dest: Path) -> None:
    """`src` as `dest`: hard links where both are on one filesystem (the layer is never written
    again), a full copy otherwise; ownership, modes, xattrs (overlay opaque markers) and device nodes
    (whiteouts) kept."""
    same_fs = os.stat(src).st_dev == os.stat(dest.parent).st_dev
    argv = ["cp", "-a", *(["-l"] if same_fs else []), "--", str(src), str(dest)]
    # The copy dies with its writer: a kill -9 of the writer must not leave a cp filling a temporary
    # folder that sweep_partial is removing.
    done = proc.run(argv, timeout=3600, check=False, die_with_parent=True)
    if done.returncode != 0:
        err = (done.stderr or "").strip().splitlines()
        text = err[-1] if err else f"cp exited {done.returncode}"
        code = errno.ENOSPC if "No space left" in text else errno.EIO
        raise OSError(code, text)


def _write_synced(path: Path, text: str) -> None:
    with path.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if path.exists() and not path.is_dir():
        with contextlib.suppress(OSError):
            path.unlink()
