"""Where the local provider keeps things: per-run folders derived from `RunRef`, the image store, the
gallery and VHD folders under the state directory, and the path-safety helpers that keep paths taken
from templates inside their root (symlinks are resolved as if the root were `/`).

    state_dir/local/runs/<template>-<run>-<hash>/   one run; removed by cleanup (kept on abort)
        staging/artifacts/  staging/prepare.json    fetched scriptUri/sourceUri files, prepare record
        staging/capture/                            disk.vhd [disk.qcow2] rootfs.tar.zst capture.json
        build/root build/upper build/work env.json  overlay (lower = cache_dir/extracted/<base>/tree)
        inbox/ (read-only at /run/imagebuilder)     step scripts, sudo shim;  validate/ logs/
    state_dir/images/ gallery/ vhds/                the stores (see `gallery`)

Exceptions::

    ProviderError (providers.base)
    └── PathEscapeError     a template path is not absolute, contains `..`, or cannot be resolved;
                            or a name used as a folder (`check_name`) could leave its parent
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.providers.base import ProviderError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_SYMLINKS = 40
MAX_NAME = 260


class PathEscapeError(ProviderError):
    """A path from a template would leave its root, or is not an absolute path without `..`."""


def safe_name(text: str, *, limit: int = 64) -> str:
    """`text` as one folder name: only [A-Za-z0-9._-], never empty, `.` or `..`."""
    name = _UNSAFE.sub("_", text).strip(".")[:limit]
    return name or "_"


def check_name(value: str, field: str) -> str:
    """Refuse a name from a template that is used as (part of) a folder name: empty, `.`, `..`, with `/`,
    `\\`, NUL or control characters, or longer than MAX_NAME. The API validates names first; this is
    the provider's own check (defense in depth), since `safe_name` alone would map them silently."""
    problem = ""
    if not isinstance(value, str) or not value.strip():
        problem = "is empty"
    elif value.strip() in (".", ".."):
        problem = f"is {value.strip()!r}"
    elif "/" in value or "\\" in value:
        problem = "contains a path separator"
    elif _CONTROL.search(value):
        problem = "contains a NUL or control character"
    elif len(value) > MAX_NAME:
        problem = f"is {len(value)} characters long (at most {MAX_NAME})"
    if problem:
        raise PathEscapeError(
            f"{field} {value[:80]!r} {problem}; it cannot name a folder",
            hint="use letters, digits, '.', '_' and '-' (Azure's resource name rules)",
        )
    return value


def short_hash(*parts: str, length: int = 10) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class RunLayout:
    """Every folder of one run, all under `state_dir/local/runs/<key>` (the key derives from the RunRef)."""

    run: RunRef
    run_dir: Path

    @classmethod
    def for_run(cls, state_dir: Path, run: RunRef) -> RunLayout:
        check_name(run.subscription_id, "subscription id")
        check_name(run.resource_group, "resource group")
        check_name(run.template_name, "template name")
        check_name(run.run_id, "run id")
        key = f"{safe_name(run.slug, limit=80)}-{short_hash(run.template_id.lower(), run.run_id)}"
        return cls(run=run, run_dir=state_dir / "local" / "runs" / key)

    @property
    def staging(self) -> Path:
        """Fetched scriptUri/sourceUri files and the prepare record."""
        return self.run_dir / "staging"

    @property
    def artifacts(self) -> Path:
        return self.staging / "artifacts"

    @property
    def prepare_record(self) -> Path:
        return self.staging / "prepare.json"

    @property
    def build(self) -> Path:
        """The build environment: `root` (what the sandbox sees), `upper`/`work` (overlay layers)."""
        return self.run_dir / "build"

    @property
    def root(self) -> Path:
        return self.build / "root"

    @property
    def upper(self) -> Path:
        return self.build / "upper"

    @property
    def overlay_work(self) -> Path:
        return self.build / "work"

    @property
    def env_record(self) -> Path:
        return self.build / "env.json"

    @property
    def inbox(self) -> Path:
        """Bound read-only into the sandbox at /run/imagebuilder (scripts, staged files, sudo shim)."""
        return self.run_dir / "inbox"

    @property
    def validate_dir(self) -> Path:
        """Throwaway roots and disks of validation."""
        return self.run_dir / "validate"

    @property
    def capture(self) -> Path:
        """The captured disk images (raw, VHD, qcow2) and the root tree tarball used for layering."""
        return self.staging / "capture"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"


@dataclass(frozen=True)
class StateLayout:
    """The long-lived stores under the state directory."""

    state_dir: Path

    @property
    def runs(self) -> Path:
        return self.state_dir / "local" / "runs"

    @property
    def images(self) -> Path:
        """Managed images: images/<sub>/<rg>/<name>/ (image.json, disk.vhd, rootfs.tar.zst)."""
        return self.state_dir / "images"

    @property
    def gallery(self) -> Path:
        """Compute Gallery: gallery/<sub>/<rg>/<gallery>/<image>/<version>/<region>/."""
        return self.state_dir / "gallery"

    @property
    def vhds(self) -> Path:
        """Default home of VHD distribute targets without a `uri`."""
        return self.state_dir / "vhds"


def check_template_path(path: str, field: str) -> str:
    """Accept an absolute POSIX path without `..` components or NUL bytes; return it normalized."""
    if not isinstance(path, str) or not path:
        raise PathEscapeError(f"{field} is empty", hint="give an absolute path such as /etc/app/app.conf")
    if "\x00" in path:
        raise PathEscapeError(f"{field} contains a NUL byte", hint="give an absolute path")
    if not path.startswith("/"):
        raise PathEscapeError(
            f"{field} {path!r} is not an absolute path",
            hint="give an absolute path such as /etc/app/app.conf",
        )
    parts = path.split("/")
    if ".." in parts:
        raise PathEscapeError(
            f"{field} {path!r} contains '..', which could leave the image's root",
            hint="give the absolute path without '..' components",
        )
    norm = "/" + "/".join(p for p in parts if p not in ("", "."))
    if norm == "/":
        raise PathEscapeError(f"{field} {path!r} names the root directory", hint="give a file path")
    return norm


def resolve_in_root(root: Path, path: str, *, follow_final: bool = True) -> Path:
    """Resolve `path` as the image would see it with `root` as `/`: symlinks (absolute or relative) and
    `..` never leave `root`. Components that do not exist yet are kept as written. With
    `follow_final=False` a symlink in the last component is not followed (for unlink/replace)."""
    base = Path(os.path.realpath(root))
    pending = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while pending:
        name = pending.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        candidate = base.joinpath(*done, name)
        if candidate.is_symlink() and (pending or follow_final):
            links += 1
            if links > MAX_SYMLINKS:
                raise PathEscapeError(
                    f"too many levels of symbolic links resolving {path!r} inside the image",
                    hint="fix the symlink loop in the image",
                )
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        done.append(name)
    resolved = base.joinpath(*done)
    if resolved != base and base not in resolved.parents:  # pragma: no cover - by construction
        raise PathEscapeError(f"{path!r} resolves outside the image root")
    return resolved


def is_within(path: Path, root: Path) -> bool:
    """True when the real path of `path` is `root` or below it."""
    real = Path(os.path.realpath(path))
    base = Path(os.path.realpath(root))
    return real == base or base in real.parents
