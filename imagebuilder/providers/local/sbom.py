"""What is in a captured root tree, read from the tree itself: the `Inventory` behind a run's SBOM (the
dpkg database and Debian's machine-readable copyright files; the regular files and the BusyBox version of
an image with no package database), and its freshness against the mirror's security suite.

Every path is resolved inside the tree (`layout.resolve_in_root`): a customizer's symlink such as
`var/lib/dpkg/status -> /etc/shadow` reads the image's file, never the host's.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imagebuilder.provenance.mirror import check_freshness
from imagebuilder.provenance.sbom import ImageFile, InstalledPackage, Inventory
from imagebuilder.providers.base import LogSink, NullLog, ProviderError
from imagebuilder.providers.local.layout import resolve_in_root

DPKG_STATUS = "var/lib/dpkg/status"
MAX_TEXT = 64 << 20  # dpkg status of a big image is a few MB
MAX_COPYRIGHT = 1 << 20
MAX_FILES = 20000
_SKIP_DIRS = {"proc", "sys", "dev", "run", "tmp"}
_BUSYBOX_VERSION = re.compile(rb"BusyBox v(\d[0-9A-Za-z.+~:-]*)")


def _read(root: Path, rel: str, limit: int) -> bytes | None:
    """A regular file of the image (symlinks resolved inside `root`), or None."""
    try:
        path = resolve_in_root(root, rel)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (OSError, ProviderError):
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not _regular(fh.fileno()):
                return None
            return fh.read(limit)
    except OSError:
        return None


def _regular(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode)


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    """deb822 paragraphs: field -> value (continuation lines joined with newlines)."""
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and last:
                fields[last] += "\n" + line.strip()
            elif ":" in line and not line.startswith("#"):
                name, _, value = line.partition(":")
                last = name.strip().lower()
                fields[last] = value.strip()
        if fields:
            yield fields


def os_release(root: Path) -> dict[str, str]:
    data = _read(root, "etc/os-release", 65536) or _read(root, "usr/lib/os-release", 65536) or b""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, eq, value = line.partition("=")
        if eq and key.strip():
            out[key.strip()] = value.strip().strip("\"'")
    return out


def copyright_licenses(root: Path, package: str) -> list[str]:
    """The `License:` short names of a package's DEP-5 (machine-readable) copyright file, in order."""
    data = _read(root, f"usr/share/doc/{package}/copyright", MAX_COPYRIGHT)
    if not data:
        return []
    text = data.decode("utf-8", "replace")
    paragraphs = list(_stanzas(text))
    if not paragraphs or "copyright-format" not in paragraphs[0].get("format", ""):
        return []
    out: list[str] = []
    for para in paragraphs:
        # License paragraphs of a Files paragraph name the license on their first line; standalone
        # License paragraphs (full texts of licenses named above) add nothing new.
        if "files" not in para or "license" not in para:
            continue
        name = para["license"].split("\n", 1)[0].strip()
        if name and name not in out:
            out.append(name)
    return out


def dpkg_packages(root: Path) -> list[InstalledPackage]:
    data = _read(root, DPKG_STATUS, MAX_TEXT)
    if data is None:
        return []
    out = []
    for st in _stanzas(data.decode("utf-8", "replace")):
        if st.get("status", "").split()[-1:] != ["installed"] or not st.get("package"):
            continue
        name = st["package"]
        source = st.get("source", "")
        src_name, _, src_version = source.partition(" ")
        out.append(
            InstalledPackage(
                name=name,
                version=st.get("version", ""),
                arch=st.get("architecture", ""),
                source_name=src_name,
                source_version=src_version.strip("() "),
                maintainer=st.get("maintainer", ""),
                homepage=st.get("homepage", ""),
                licenses=copyright_licenses(root, name),
            )
        )
    return sorted(out, key=lambda p: (p.name, p.arch))


def _files(root: Path) -> Iterator[tuple[str, Path]]:
    base = Path(os.path.realpath(root))
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = os.path.relpath(dirpath, base)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            yield os.path.normpath(os.path.join(rel_dir, name)), path


def file_inventory(root: Path) -> tuple[list[ImageFile], list[InstalledPackage]]:
    """The regular files (SHA-1 and SHA-256) and the programs recognized among them (BusyBox)."""
    files: list[ImageFile] = []
    components: list[InstalledPackage] = []
    for rel, path in _files(root):
        if len(files) >= MAX_FILES:
            break
        sha1, sha256, size = hashlib.sha1(usedforsecurity=False), hashlib.sha256(), 0
        version = None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                if not _regular(fh.fileno()):
                    continue
                while chunk := fh.read(1 << 20):
                    sha1.update(chunk)
                    sha256.update(chunk)
                    size += len(chunk)
                    if rel.endswith("busybox") and version is None:
                        m = _BUSYBOX_VERSION.search(chunk)
                        version = m.group(1).decode() if m else None
        except OSError:
            continue
        files.append(ImageFile(path=rel, size=size, sha1=sha1.hexdigest(), sha256=sha256.hexdigest()))
        if version and not any(c.name == "busybox" for c in components):
            components.append(InstalledPackage(name="busybox", version=version, licenses=["GPL-2"]))
    return files, components


def read_inventory(root: Path) -> Inventory:
    """The inventory of a root tree: its dpkg database when it has one, else its files."""
    rel = os_release(root)
    common: dict[str, Any] = {
        "os_id": rel.get("ID", ""),
        "os_version_id": rel.get("VERSION_ID", ""),
        "os_codename": rel.get("VERSION_CODENAME", ""),
        "os_name": rel.get("PRETTY_NAME", ""),
    }
    packages = dpkg_packages(root)
    if packages:
        return Inventory(kind="dpkg", packages=packages, **common)
    files, components = file_inventory(root)
    if not common["os_name"] and components:
        common["os_name"] = f"BusyBox {components[0].version}"
    return Inventory(kind="files", files=files, components=components, **common)


def freshness(inv: Inventory, *, security_mirror: str, log: LogSink | None = None) -> dict[str, Any] | None:
    """Pending security updates of a Debian inventory (None for other images); an unreachable mirror is
    reported in the record (`error`), never fails the build."""
    record = check_freshness(inv, security_mirror=security_mirror)
    if record is not None:
        (log or NullLog()).write(
            f"[sbom] freshness: {record['suite']} at {security_mirror}: "
            + (f"cannot be read: {record['error']}" if "error" in record else
               f"{record['securityUpdatesPending']} package(s) with a newer version")
            + "\n"
        )  # fmt: skip
    return record


def describe(root: Path, log: LogSink) -> dict[str, Any]:
    """What capture adds to the captured image: `inventory` (the capture activity moves it to the run's
    store) and `freshness` (Debian only). Reading never fails a capture: a tree that cannot be read
    gives an empty inventory and says so in the log."""
    from imagebuilder.providers.local.bases import debian_mirrors

    try:
        inv = read_inventory(root)
    except (OSError, ValueError, ProviderError) as exc:
        log.write(f"[sbom] cannot read the image's inventory: {exc}\n")
        return {}
    what = f"{len(inv.packages)} dpkg package(s)" if inv.kind == "dpkg" else f"{len(inv.files)} file(s)"
    log.write(f"[sbom] inventory: {what} ({inv.os_name or 'unknown OS'})\n")
    out: dict[str, Any] = {"inventory": inv.model_dump(mode="json")}
    fresh = freshness(inv, security_mirror=debian_mirrors()[1], log=log)
    if fresh is not None:
        out["freshness"] = fresh
    return out
