"""The local image stores: managed images, a Compute Gallery (definitions, versions, one store per region)
and published VHDs, all under the state directory, keyed by their ARM ids (case-insensitively, like ARM).

    images/<sub>/<rg>/<name>/                     image.json, disk.vhd, rootfs.tar.zst
    gallery/<sub>/<rg>/<gallery>/<image>/         definition.json, .lock
        <version>/version.json                    versions, per-region state, excludeFromLatest, owner run
        <version>/<region>/                       disk.vhd (a hard link), rootfs.tar.zst
    vhds/<sub>/<rg>/<template>/<run>/<output>.vhd default home of VHD targets without a `uri`

Every image carries its root tree as rootfs.tar.zst next to the disk, so a later template can layer on it
(ManagedImage / SharedImageVersion sources). Replicas are hard links of the one captured disk (verified
by its hash and inode; deleting one leaves the others) or, across filesystems, reflinked or sparse
copies verified by sha256 (`copy_verified`).

Exceptions::

    ProviderError (providers.base)
    └── GalleryError    a bad id, an unknown image or version, a conflicting version or location (.code)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagebuilder.providers.base import LogSink, ProviderError
from imagebuilder.providers.local import proc
from imagebuilder.providers.local.fsutil import locked_file, sha256_cached, sha256_file
from imagebuilder.providers.local.layout import PathEscapeError, check_name, safe_name

DISK = "disk.vhd"
ROOTFS = "rootfs.tar.zst"
_VERSION = re.compile(r"^(\d{1,9})\.(\d{1,9})\.(\d{1,9})$")
_IMAGE_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Compute/images/(?P<name>[^/]+)/?$",
    re.IGNORECASE,
)
_GALLERY_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Compute/galleries/"
    r"(?P<gallery>[^/]+)/images/(?P<image>[^/]+)(?:/versions/(?P<version>[^/]+))?/?$",
    re.IGNORECASE,
)


class GalleryError(ProviderError):
    """A store operation that cannot succeed; `code` is AIB-like (e.g. BadSharedImageVersionSource)."""

    def __init__(self, code: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


def parse_version(text: str) -> tuple[int, int, int] | None:
    m = _VERSION.match(text.strip())
    if not m:
        return None
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)))


def region_key(name: str) -> str:
    """A region as ARM compares them: case and spaces folded ("West US 2" is "westus2")."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _key(text: str) -> str:
    return safe_name(text.lower(), limit=90)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with locked_file(folder / ".lock"):
        yield


def copy_verified(
    src: Path, dest: Path, sha256: str, *, log: LogSink | None = None, share: bool = False
) -> None:
    """Put `src` at `dest`, verified against `sha256`, moved into place atomically.

    `share` (the provider's own stores, whose disks are never written after they are placed): a hard
    link when both are on one filesystem; it is verified by `src` still having the hash (remembered
    per path, size and mtime: computed at most once per process) and `dest` being the same inode.
    Deleting one replica leaves the others. Otherwise (or across filesystems) a copy, cloned where the
    filesystem can (reflink) and sparse, whose own sha256 is checked."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    with contextlib.suppress(FileNotFoundError):
        part.unlink()
    try:
        if share and sha256_cached(src) == sha256:
            try:
                os.link(src, part)
            except OSError:
                pass
            else:
                if os.stat(part).st_ino == os.stat(src).st_ino and sha256_cached(src) == sha256:
                    os.replace(part, dest)
                    return
                part.unlink()
        proc.run(["cp", "--reflink=auto", "--sparse=always", str(src), str(part)], log=log)
        actual = sha256_file(part)
        if actual != sha256:
            raise GalleryError(
                "ReplicationChecksumMismatch",
                f"copy of {src} to {dest} has sha256 {actual}, expected {sha256}",
                hint="the disk may be failing or full; retry the run",
            )
        os.replace(part, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


def link_or_copy(src: Path, dest: Path, *, log: LogSink | None = None) -> None:
    """The root tree tarball is an internal layering aid that never changes once written: stores share
    it by hard link (a verified copy when the stores are on another filesystem)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.link")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
        os.replace(tmp, dest)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        copy_verified(src, dest, sha256_cached(src), log=log)


# ---------------------------------------------------------------------------------------------- images


def _check_parts(field: str, code: str, **parts: str) -> None:
    """Each segment of a resource id names a folder of a store: refuse `..`, NUL, separators (see
    `layout.check_name`) with the store's own error code."""
    for what, value in parts.items():
        try:
            check_name(value, f"{field} ({what})")
        except PathEscapeError as exc:
            raise GalleryError(code, str(exc)) from exc


@dataclass(frozen=True)
class ImageId:
    sub: str
    rg: str
    name: str
    text: str

    @classmethod
    def parse(cls, text: str, field: str) -> ImageId:
        m = _IMAGE_ID.match(text.strip())
        if not m:
            raise GalleryError(
                "BadManagedImageId",
                f"{field} {text!r} is not a managed image id",
                hint="write /subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Compute/images/<name>",
            )
        _check_parts(field, "BadManagedImageId", sub=m["sub"], rg=m["rg"], name=m["name"])
        return cls(m["sub"], m["rg"], m["name"], text.strip())


@dataclass(frozen=True)
class GalleryImageId:
    sub: str
    rg: str
    gallery: str
    image: str
    version: str | None
    text: str

    @classmethod
    def parse(cls, text: str, field: str) -> GalleryImageId:
        m = _GALLERY_ID.match(text.strip())
        if not m:
            raise GalleryError(
                "BadSharedImageDistribute",
                f"{field} {text!r} is not a gallery image id",
                hint="write /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Compute/galleries/"
                "<gallery>/images/<image>[/versions/<x.y.z>|latest]",
            )
        _check_parts(
            field,
            "BadSharedImageDistribute",
            sub=m["sub"],
            rg=m["rg"],
            gallery=m["gallery"],
            image=m["image"],
            version=m["version"] or "latest",
        )
        return cls(m["sub"], m["rg"], m["gallery"], m["image"], m["version"], text.strip())

    @property
    def image_id(self) -> str:
        return (
            f"/subscriptions/{self.sub}/resourceGroups/{self.rg}/providers/Microsoft.Compute/galleries/"
            f"{self.gallery}/images/{self.image}"
        )

    def version_id(self, version: str) -> str:
        return f"{self.image_id}/versions/{version}"


@dataclass(frozen=True)
class StoredImage:
    """An image found in a store: its disk, its root tree and its metadata."""

    id: str
    disk: Path
    rootfs: Path
    meta: dict[str, Any]

    @property
    def generation(self) -> str:
        return str(self.meta.get("generation", "V1"))

    @property
    def bootable(self) -> bool:
        return bool(self.meta.get("bootable", False))


class Stores:
    """The managed image store, the gallery and the VHD folder under one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.images_dir = state_dir / "images"
        self.gallery_dir = state_dir / "gallery"
        self.vhds_dir = state_dir / "vhds"

    # -- managed images

    def image_dir(self, image: ImageId) -> Path:
        return self.images_dir / _key(image.sub) / _key(image.rg) / _key(image.name)

    def find_image(self, image_id: str, field: str) -> StoredImage:
        ref = ImageId.parse(image_id, field)
        folder = self.image_dir(ref)
        meta_file = folder / "image.json"
        if not meta_file.is_file():
            raise GalleryError(
                "BadManagedImageSource",
                f"{field}: managed image {image_id} does not exist in the local image store",
                hint="build it first with a ManagedImage distribute target, or fix the id",
            )
        meta = _read_json(meta_file)
        return StoredImage(str(meta.get("id", image_id)), folder / DISK, folder / ROOTFS, meta)

    def publish_image(
        self,
        image_id: str,
        location: str,
        *,
        disk: Path,
        rootfs: Path,
        meta: dict[str, Any],
        field: str,
        log: LogSink | None = None,
    ) -> StoredImage:
        """Create or replace a managed image (same location only, like ARM). Idempotent per run."""
        ref = ImageId.parse(image_id, field)
        folder = self.image_dir(ref)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _locked(folder.parent / f".{folder.name}.d"):
            meta_file = folder / "image.json"
            if meta_file.is_file():
                old = _read_json(meta_file)
                if region_key(str(old.get("location", ""))) != region_key(location):
                    raise GalleryError(
                        "ManagedImageLocationConflict",
                        f"{field}: managed image {image_id} already exists in {old.get('location')!r}, "
                        f"not in {location!r}",
                        hint="use the image's location, or another image name",
                    )
                if old.get("run") == meta.get("run") and old.get("sha256") == meta.get("sha256"):
                    return StoredImage(str(old["id"]), folder / DISK, folder / ROOTFS, old)
            staging = folder.parent / f".{folder.name}.new"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            try:
                copy_verified(disk, staging / DISK, str(meta["sha256"]), log=log, share=True)
                if rootfs.is_file():
                    link_or_copy(rootfs, staging / ROOTFS, log=log)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            full = {
                **meta,
                "id": ref.text,
                "name": ref.name,
                "location": location,
                "type": "Microsoft.Compute/images",
            }
            _write_json(staging / "image.json", full)
            old_dir = folder.parent / f".{folder.name}.old"
            shutil.rmtree(old_dir, ignore_errors=True)
            if folder.exists():
                os.replace(folder, old_dir)
            os.replace(staging, folder)
            shutil.rmtree(old_dir, ignore_errors=True)
            return StoredImage(ref.text, folder / DISK, folder / ROOTFS, full)

    # -- gallery

    def image_definition_dir(self, ref: GalleryImageId) -> Path:
        return self.gallery_dir / _key(ref.sub) / _key(ref.rg) / _key(ref.gallery) / _key(ref.image)

    def versions(self, ref: GalleryImageId) -> dict[str, dict[str, Any]]:
        """All versions of an image definition: {version: version.json}."""
        folder = self.image_definition_dir(ref)
        out: dict[str, dict[str, Any]] = {}
        if not folder.is_dir():
            return out
        for entry in os.scandir(folder):
            meta = Path(entry.path) / "version.json"
            if entry.is_dir() and parse_version(entry.name) and meta.is_file():
                out[entry.name] = _read_json(meta)
        return out

    def find_version(self, version_id: str, field: str, *, prefer_region: str | None = None) -> StoredImage:
        """A SharedImageVersion source: an exact version or `latest` (the highest version not excluded
        from latest that has at least one replicated region)."""
        ref = GalleryImageId.parse(version_id, field)
        if ref.version is None:
            raise GalleryError(
                "BadSharedImageVersionSource",
                f"{field} {version_id!r} names no version",
                hint="end the id with /versions/<x.y.z> or /versions/latest",
            )
        versions = self.versions(ref)
        ready = {
            v: m
            for v, m in versions.items()
            if any(r.get("state") == "Succeeded" for r in (m.get("regions") or {}).values())
        }
        if ref.version.lower() == "latest":
            candidates = [v for v, m in ready.items() if not m.get("excludeFromLatest")]
            if not candidates:
                raise GalleryError(
                    "BadSharedImageVersionSource",
                    f"{field}: image {ref.image_id} has no version to use as latest "
                    f"(versions: {', '.join(sorted(versions)) or 'none'})",
                    hint="publish a version first (a SharedImage distribute target) or name an exact version",
                )
            version = max(candidates, key=lambda v: parse_version(v) or (0, 0, 0))
        else:
            version = ref.version
            if version not in ready:
                raise GalleryError(
                    "BadSharedImageVersionSource",
                    f"{field}: version {version} of {ref.image_id} does not exist locally or has no "
                    f"replicated region (versions: {', '.join(sorted(ready)) or 'none'})",
                    hint="publish it first, or use /versions/latest",
                )
        meta = ready[version]
        regions = [r for r, s in (meta.get("regions") or {}).items() if s.get("state") == "Succeeded"]
        region = (
            region_key(prefer_region)
            if prefer_region and region_key(prefer_region) in regions
            else sorted(regions)[0]
        )
        folder = self.image_definition_dir(ref) / version / _key(region)
        return StoredImage(str(meta.get("id", ref.version_id(version))), folder / DISK, folder / ROOTFS, meta)

    def ensure_definition(self, ref: GalleryImageId, *, generation: str, field: str) -> dict[str, Any]:
        """The image definition, created on first use (Azure needs it created beforehand; here the first
        distribution creates it with the captured image's generation). A generation mismatch fails."""
        folder = self.image_definition_dir(ref)
        path = folder / "definition.json"
        with _locked(folder):
            if path.is_file():
                definition = _read_json(path)
                if definition.get("hyperVGeneration", "V1") != generation:
                    raise GalleryError(
                        "BadSharedImageDistribute",
                        f"{field}: image definition {ref.image_id} is hyperVGeneration "
                        f"{definition.get('hyperVGeneration')}, the image is {generation}",
                        hint="distribute to an image definition of the same generation",
                    )
                return definition
            definition = {
                "id": ref.image_id,
                "name": ref.image,
                "osType": "Linux",
                "osState": "Generalized",
                "hyperVGeneration": generation,
                "autoCreated": True,
            }
            _write_json(path, definition)
            return definition

    def allocate_version(
        self,
        ref: GalleryImageId,
        *,
        owner: dict[str, Any],
        versioning: dict[str, Any] | None,
        source_version: str | None,
        base_meta: dict[str, Any],
        field: str,
    ) -> tuple[str, dict[str, Any]]:
        """The version this run's target publishes: found again when the same owner asks (all regions and
        retries agree), otherwise chosen by `versioning` (Latest / Source) or the id's explicit version."""
        folder = self.image_definition_dir(ref)
        with _locked(folder):
            existing = self.versions(ref)
            for version, meta in existing.items():
                if meta.get("owner") == owner:
                    return version, meta
            version = self._choose_version(ref, existing, versioning, source_version, field)
            meta = {
                **base_meta,
                "id": ref.version_id(version),
                "name": version,
                "owner": owner,
                "regions": {},
                "provisioningState": "Creating",
                "publishedDate": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
            (folder / version).mkdir(parents=True, exist_ok=True)
            _write_json(folder / version / "version.json", meta)
            return version, meta

    def _choose_version(
        self,
        ref: GalleryImageId,
        existing: dict[str, dict[str, Any]],
        versioning: dict[str, Any] | None,
        source_version: str | None,
        field: str,
    ) -> str:
        if ref.version is not None:
            if parse_version(ref.version) is None:
                raise GalleryError(
                    "BadSharedImageDistribute",
                    f"{field}.galleryImageId: version {ref.version!r} is not major.minor.patch",
                    hint="write a version like 1.0.3, or leave it out and set versioning",
                )
            if ref.version in existing:
                raise GalleryError(
                    "GalleryImageVersionExists",
                    f"{field}.galleryImageId: version {ref.version} of {ref.image_id} already exists",
                    hint="choose a new version, or drop the version and use versioning {'scheme': 'Latest'}",
                )
            return ref.version
        scheme = str((versioning or {}).get("scheme") or "Latest")
        if scheme.lower() == "source":
            parsed = parse_version(source_version or "")
            if parsed is None:
                raise GalleryError(
                    "BadSharedImageDistribute",
                    f"{field}.versioning: scheme Source needs a source version major.minor.patch, "
                    f"the source has {source_version!r}",
                    hint="use versioning {'scheme': 'Latest'} or an explicit version in galleryImageId",
                )
            version = ".".join(str(n) for n in parsed)
            if version in existing:
                raise GalleryError(
                    "GalleryImageVersionExists",
                    f"{field}.versioning: version {version} (from the source) of {ref.image_id} "
                    "already exists",
                    hint="use versioning {'scheme': 'Latest'} to publish the same source again",
                )
            return version
        if scheme.lower() != "latest":
            raise GalleryError(
                "BadSharedImageDistribute",
                f"{field}.versioning.scheme {scheme!r} is not Latest or Source",
                hint="set versioning.scheme to Latest or Source",
            )
        major = int(
            (versioning or {}).get("major", -1) if (versioning or {}).get("major") is not None else -1
        )
        parsed_all = [p for p in (parse_version(v) for v in existing) if p is not None]
        if major >= 0:
            parsed_all = [p for p in parsed_all if p[0] == major]
        if not parsed_all:
            return f"{major if major >= 0 else 1}.0.0"
        top = max(parsed_all)
        return f"{top[0]}.{top[1]}.{top[2] + 1}"

    def replicate(
        self,
        ref: GalleryImageId,
        version: str,
        region: str,
        *,
        disk: Path,
        rootfs: Path,
        sha256: str,
        settings: dict[str, Any],
        log: LogSink | None = None,
    ) -> Path:
        """Copy the image into one region's store of a version and mark the region Succeeded."""
        folder = self.image_definition_dir(ref) / version
        region_dir = folder / _key(region_key(region))
        target = region_dir / DISK
        meta_path = folder / "version.json"
        state = (_read_json(meta_path).get("regions") or {}).get(region_key(region), {})
        if not (state.get("state") == "Succeeded" and target.is_file() and state.get("sha256") == sha256):
            self._set_region(ref, version, region, {**settings, "state": "Replicating"})
            try:
                copy_verified(disk, target, sha256, log=log, share=True)
                if rootfs.is_file():
                    link_or_copy(rootfs, region_dir / ROOTFS, log=log)
            except BaseException as exc:
                self._set_region(
                    ref, version, region, {**settings, "state": "Failed", "error": str(exc)[:500]}
                )
                raise
            self._set_region(ref, version, region, {**settings, "state": "Succeeded", "sha256": sha256})
        return target

    def _set_region(self, ref: GalleryImageId, version: str, region: str, state: dict[str, Any]) -> None:
        folder = self.image_definition_dir(ref)
        with _locked(folder):
            path = folder / version / "version.json"
            meta = _read_json(path)
            regions = dict(meta.get("regions") or {})
            regions[region_key(region)] = {"name": region, **state}
            meta["regions"] = regions
            wanted = [region_key(str(r)) for r in meta.get("targetRegions", [])]
            done = all(regions.get(r, {}).get("state") == "Succeeded" for r in wanted) if wanted else True
            failed = any(s.get("state") == "Failed" for s in regions.values())
            meta["provisioningState"] = "Failed" if failed else ("Succeeded" if done else "Creating")
            _write_json(path, meta)
