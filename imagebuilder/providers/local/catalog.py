"""The local catalog: PlatformImage URNs (the Azure Marketplace's publisher:offer:sku:version) -> local bases.

`resolve(publisher, offer, sku, version, *, extra=None) -> BaseImage` maps a URN to a base this machine can
build: ``Debian:debian-12:12`` (Gen1/BIOS), ``Debian:debian-12:12-gen2`` (Gen2/UEFI), and a tiny BusyBox
base for fast tests, ``ImageBuilderLocal:busybox:stable`` (and ``…:stable-gen2``). ``latest`` becomes an
exact version, which the run records: BusyBox's recipe version (``0.<recipe date>.<content number>``);
Debian's follows the mirror (``0.<mirror date>.<n>``, see `mirrorstate`) when a cache dir is given.
`ensure_base(base, cache_dir, *, log=None) -> Path` and `extract_base(tarball, dest)` live in `bases`.

Exceptions::

    ProviderError (providers.base)
    └── CatalogError    no local base for a URN or version (lists the available ones and the setting)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from imagebuilder.providers.base import LogSink, ProviderError

if TYPE_CHECKING:
    from imagebuilder.providers.local.bases import BaseManifest

Kind = Literal["debian", "busybox"]
Generation = Literal["V1", "V2"]

#: The app setting (a path to a JSON file) that maps more URNs to local bases; see `load_catalog_file`.
CATALOG_SETTING = "IMAGEBUILDER_LOCAL_CATALOG"


class CatalogError(ProviderError):
    """A PlatformImage URN or version that has no local base."""


@dataclass(frozen=True)
class BaseImage:
    """One local base image, identified like a Marketplace image (`urn`).

    `version` is always exact (never ``latest``). `kind` selects the recipe in `bases`; `generation` is the
    Hyper-V generation the disk is built for (V1: BIOS boot, V2: UEFI); `bootable` says whether the base
    carries a kernel (BusyBox does not: its images validate in the sandbox, not under QEMU).
    """

    publisher: str
    offer: str
    sku: str
    version: str
    kind: Kind
    generation: Generation
    bootable: bool

    @property
    def urn(self) -> str:
        return f"{self.publisher}:{self.offer}:{self.sku}:{self.version}"


@dataclass(frozen=True)
class _Entry:
    publisher: str
    offer: str
    sku: str
    kind: Kind
    generation: Generation

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.publisher.lower(), self.offer.lower(), self.sku.lower())

    @property
    def urn(self) -> str:
        return f"{self.publisher}:{self.offer}:{self.sku}"


BUILTIN: tuple[_Entry, ...] = (
    _Entry("Debian", "debian-12", "12", "debian", "V1"),
    _Entry("Debian", "debian-12", "12-gen2", "debian", "V2"),
    _Entry("ImageBuilderLocal", "busybox", "stable", "busybox", "V1"),
    _Entry("ImageBuilderLocal", "busybox", "stable-gen2", "busybox", "V2"),
)


def recipe_version(kind: Kind) -> str:
    """The exact version `latest` resolves to for `kind`: derived from the recipe (date + content)."""
    from imagebuilder.providers.local.bases import recipe_for

    return recipe_for(kind).version


def _parse_spec(urn: str, spec: str) -> tuple[Kind, Generation | None]:
    """A catalog value: an existing URN (``Debian:debian-12:12-gen2``) or ``kind[:V1|V2]``."""
    parts = spec.split(":")
    if len(parts) == 3:
        for entry in BUILTIN:
            if entry.key == tuple(p.lower() for p in parts):
                return entry.kind, entry.generation
        raise CatalogError(
            f"{CATALOG_SETTING}: {urn!r} maps to {spec!r}, which is not a built-in URN",
            hint=f"use one of {', '.join(e.urn for e in BUILTIN)} or 'debian[:V1|V2]' / 'busybox[:V1|V2]'",
        )
    kind = parts[0].strip().lower()
    gen = parts[1].strip().upper() if len(parts) == 2 else None
    if kind not in ("debian", "busybox") or gen not in (None, "V1", "V2") or len(parts) > 2:
        raise CatalogError(
            f"{CATALOG_SETTING}: {urn!r} maps to {spec!r}, which is not a base spec",
            hint="a value is a built-in URN (publisher:offer:sku) or 'debian[:V1|V2]' / 'busybox[:V1|V2]'",
        )
    return kind, gen  # type: ignore[return-value]


def _entries(extra: Mapping[str, str] | None) -> list[_Entry]:
    entries = list(BUILTIN)
    for urn, spec in (extra or {}).items():
        parts = urn.split(":")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise CatalogError(
                f"{CATALOG_SETTING}: key {urn!r} is not a URN publisher:offer:sku",
                hint="write keys like 'Canonical:0001-com-ubuntu-server-jammy:22_04-lts' (no version)",
            )
        kind, gen = _parse_spec(urn, spec)
        if gen is None:
            gen = "V2" if parts[2].lower().endswith("gen2") else "V1"
        entries.insert(0, _Entry(parts[0], parts[1], parts[2], kind, gen))
    return entries


def local_base_urn(base: BaseImage) -> str:
    """The built-in URN (publisher:offer:sku) whose recipe `base` is built from: for a URN mapped by
    IMAGEBUILDER_LOCAL_CATALOG, what the image really is (e.g. Debian:debian-12:12)."""
    for entry in BUILTIN:
        if entry.kind == base.kind and entry.generation == base.generation:
            return entry.urn
    return f"{base.kind}:{base.generation}"


def _exact_version(
    kind: Kind, wanted: str, cache_dir: Path | None, refresh_hours: float | None, log: LogSink | None
) -> str | None:
    from imagebuilder.providers.local import bases, mirrorstate

    recipe = bases.recipe_for(kind)
    if wanted.lower() == "latest":
        if kind != "debian" or cache_dir is None:
            return recipe.version
        return mirrorstate.latest_debian_version(recipe, cache_dir, refresh_hours=refresh_hours, log=log)
    if wanted == recipe.version:
        return wanted
    if kind != "debian" or not recipe.owns(wanted):
        return None
    if cache_dir is None or bases.tarball_path(kind, wanted, cache_dir).is_file():
        return wanted
    return wanted if mirrorstate.current_version(recipe, cache_dir) == wanted else None


def _cached_versions(kind: Kind, cache_dir: Path | None) -> list[str]:
    from imagebuilder.providers.local import bases

    recipe = bases.recipe_for(kind)
    if cache_dir is None:
        return [recipe.version]
    found = {
        p.name.removeprefix(f"{kind}-").removesuffix(".tar.zst") for p in cache_dir.glob(f"{kind}-*.tar.zst")
    }
    return sorted(v for v in found if recipe.owns(v)) or [recipe.version]


def available_urns(extra: Mapping[str, str] | None = None) -> list[str]:
    """Every URN (publisher:offer:sku) that resolves locally."""
    return [e.urn for e in _entries(extra)]


def resolve(
    publisher: str,
    offer: str,
    sku: str,
    version: str,
    *,
    extra: Mapping[str, str] | None = None,
    cache_dir: Path | None = None,
    refresh_hours: float | None = None,
    log: LogSink | None = None,
) -> BaseImage:
    """The local base for a PlatformImage source; ``latest`` becomes the exact version.

    With `cache_dir`, Debian's ``latest`` follows the mirror's state, checked at most every
    `refresh_hours` (None: pinned to the newest cached base), and an explicit Debian version is accepted
    when it is cached there (or is the one the recorded mirror state names); without it, the recipe's.

    `extra` maps more URNs (publisher:offer:sku) to a base: a built-in URN or ``kind[:V1|V2]``
    (read it from the file named by the ``IMAGEBUILDER_LOCAL_CATALOG`` setting with `load_catalog_file`).
    Matching is case-insensitive, like Azure. Raises `CatalogError` naming what is available.
    """
    key = (publisher.strip().lower(), offer.strip().lower(), sku.strip().lower())
    entries = _entries(extra)
    for entry in entries:
        if entry.key != key:
            continue
        wanted = version.strip()
        exact = _exact_version(entry.kind, wanted, cache_dir, refresh_hours, log)
        if exact is None:
            have = _cached_versions(entry.kind, cache_dir)
            raise CatalogError(
                f"version {wanted!r} of {entry.urn} is not available locally; available: "
                f"{', '.join([*have, 'latest'])}",
                hint="set properties.source.version to 'latest' or one of those versions",
            )
        return BaseImage(
            publisher=publisher.strip(),
            offer=offer.strip(),
            sku=sku.strip(),
            version=exact,
            kind=entry.kind,
            generation=entry.generation,
            bootable=entry.kind == "debian",
        )
    raise CatalogError(
        f"no local base image for {publisher}:{offer}:{sku}:{version}; "
        f"available: {', '.join(e.urn for e in entries)}",
        hint=(
            f"use one of those URNs, or map this URN to a local base in a JSON file named by the "
            f'{CATALOG_SETTING} setting, e.g. {{"{publisher}:{offer}:{sku}": "Debian:debian-12:12"}}'
        ),
    )


def load_catalog_file(path: str | Path) -> dict[str, str]:
    """Read the JSON file of the ``IMAGEBUILDER_LOCAL_CATALOG`` setting: ``{urn: spec}`` where spec is a
    built-in URN, ``kind[:generation]``, or an object ``{"kind": ..., "generation": ...}``."""
    p = Path(path)
    try:
        data: Any = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise CatalogError(
            f"{CATALOG_SETTING}={p}: cannot read the catalog file: {exc}",
            hint="point the setting at a JSON object mapping 'publisher:offer:sku' to a base",
        ) from exc
    if not isinstance(data, dict):
        raise CatalogError(
            f"{CATALOG_SETTING}={p}: the file must hold a JSON object",
            hint='e.g. {"Canonical:ubuntu-24_04-lts:server": "Debian:debian-12:12"}',
        )
    out: dict[str, str] = {}
    for urn, spec in data.items():
        if isinstance(spec, dict):
            kind = str(spec.get("kind", ""))
            gen = spec.get("generation")
            spec = f"{kind}:{gen}" if gen else kind
        if not isinstance(spec, str):
            raise CatalogError(
                f"{CATALOG_SETTING}={p}: value of {urn!r} must be a string or an object",
                hint="a built-in URN, 'debian[:V1|V2]', or {'kind': 'debian', 'generation': 'V2'}",
            )
        _parse_spec(urn, spec)
        out[str(urn)] = spec
    _entries(out)
    return out


def ensure_base(base: BaseImage, cache_dir: Path, *, log: LogSink | None = None) -> Path:
    """The cached root tarball (tar.zst) of `base`, built on first use. See `bases.ensure_base`."""
    from imagebuilder.providers.local import bases

    return bases.ensure_base(base, cache_dir, log=log)


def extract_base(tarball: Path, dest: Path) -> None:
    """Unpack a base tarball into `dest` (created; must be empty). See `bases.extract_base`."""
    from imagebuilder.providers.local import bases

    bases.extract_base(tarball, dest)


def base_manifest(tarball: Path) -> BaseManifest:
    """The manifest recorded next to a base tarball (packages and versions, recipe, checksum)."""
    from imagebuilder.providers.local import bases

    return bases.read_manifest(tarball)
