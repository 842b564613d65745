"""SBOM documents of one run output (pure, no I/O): an `Inventory` read from the image by a provider
(installed packages, or the files of an image with no package database) becomes an SPDX 2.3 or a
CycloneDX 1.5 JSON document, related to the source image and to every artifact the customizers fetched.

Debian's copyright files name licenses with DEP-5 short names (`GPL-2+`, `Expat`); they are mapped to SPDX
ids where one exists and become `LicenseRef-` entries (with their DEP-5 name) where none does.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

TOOL = "imagebuilder-functions-0.1.0"
_NAMESPACE = uuid.UUID("0b6c7f2e-9d4b-4f4e-8a57-2f6b3c9d1e40")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class InstalledPackage(_Model):
    """One package of the image's package database (dpkg: one `Status: install ok installed` stanza)."""

    name: str
    version: str
    arch: str = ""
    source_name: str = ""
    source_version: str = ""
    maintainer: str = ""
    homepage: str = ""
    licenses: list[str] = Field(
        default_factory=list, description="DEP-5 `License:` short names, one entry per paragraph"
    )


class ImageFile(_Model):
    """One regular file of an image that has no package database (BusyBox)."""

    path: str
    size: int
    sha1: str
    sha256: str


class Inventory(_Model):
    """What a provider read from the final image: its dpkg database (`dpkg`), its files (`files`), or, for
    Windows on Azure, its installed programs and hotfixes (`windows`: maintainer = publisher)."""

    kind: Literal["dpkg", "files", "windows"]
    os_id: str = ""
    os_version_id: str = ""
    os_codename: str = ""
    os_name: str = ""
    packages: list[InstalledPackage] = Field(default_factory=list)
    files: list[ImageFile] = Field(default_factory=list)
    components: list[InstalledPackage] = Field(
        default_factory=list, description="Known programs found in the files (e.g. busybox with its version)"
    )

    def package(self, name: str) -> InstalledPackage | None:
        return next((p for p in self.packages if p.name == name), None)


class SourceRef(_Model):
    """The resolved source image of the run."""

    type: str
    id: str
    version: str | None = None


class ArtifactRef(_Model):
    """A customizer's scriptUri/sourceUri as fetched (its SHA-256 checked)."""

    uri: str
    sha256: str
    size: int | None = None


class ImageRef(_Model):
    """The run output the document describes."""

    template_name: str
    run_id: str
    output_name: str
    artifact_id: str | None = None
    sha256: str | None = None


# -- licenses --------------------------------------------------------------------------------------------

_DEP5_TO_SPDX = {
    "gpl-1": "GPL-1.0-only",
    "gpl-1+": "GPL-1.0-or-later",
    "gpl-2": "GPL-2.0-only",
    "gpl-2+": "GPL-2.0-or-later",
    "gpl-3": "GPL-3.0-only",
    "gpl-3+": "GPL-3.0-or-later",
    "lgpl-2": "LGPL-2.0-only",
    "lgpl-2+": "LGPL-2.0-or-later",
    "lgpl-2.1": "LGPL-2.1-only",
    "lgpl-2.1+": "LGPL-2.1-or-later",
    "lgpl-3": "LGPL-3.0-only",
    "lgpl-3+": "LGPL-3.0-or-later",
    "agpl-3": "AGPL-3.0-only",
    "agpl-3+": "AGPL-3.0-or-later",
    "gfdl-1.2": "GFDL-1.2-only",
    "gfdl-1.2+": "GFDL-1.2-or-later",
    "gfdl-1.3": "GFDL-1.3-only",
    "gfdl-1.3+": "GFDL-1.3-or-later",
    "apache-2.0": "Apache-2.0",
    "apache-2": "Apache-2.0",
    "artistic": "Artistic-1.0-Perl",
    "artistic-2.0": "Artistic-2.0",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd-4-clause": "BSD-4-Clause",
    "expat": "MIT",
    "mit": "MIT",
    "isc": "ISC",
    "zlib": "Zlib",
    "mpl-1.1": "MPL-1.1",
    "mpl-2.0": "MPL-2.0",
    "cc0-1.0": "CC0-1.0",
    "cc0": "CC0-1.0",
    "bsl-1.0": "BSL-1.0",
    "psf-2": "PSF-2.0",
    "python-2.0": "Python-2.0",
    "openssl": "OpenSSL",
    "x11": "X11",
    "ftl": "FTL",
    "curl": "curl",
    "unicode-dfs-2016": "Unicode-DFS-2016",
    "0bsd": "0BSD",
    "epl-1.0": "EPL-1.0",
    "epl-2.0": "EPL-2.0",
    "ofl-1.1": "OFL-1.1",
    "wtfpl": "WTFPL",
    "gpl-2.0": "GPL-2.0-only",
    "gpl-2.0+": "GPL-2.0-or-later",
    "gpl-3.0": "GPL-3.0-only",
    "gpl-3.0+": "GPL-3.0-or-later",
    "lgpl-2.0+": "LGPL-2.0-or-later",
    "lgpl-2.1-or-later": "LGPL-2.1-or-later",
    "bsd-4-clause-uc": "BSD-4-Clause-UC",
    "cc-by-3.0": "CC-BY-3.0",
    "cc-by-sa-3.0": "CC-BY-SA-3.0",
    "cc-by-4.0": "CC-BY-4.0",
    "cc-by-sa-4.0": "CC-BY-SA-4.0",
    "beerware": "Beerware",
    "unicode-3.0": "Unicode-3.0",
    "sgi-b-2.0": "SGI-B-2.0",
}
_SPLIT = re.compile(r"\s+(or|and)\s+|\s*,\s*(?:or\s+)?", re.IGNORECASE)
_REF_CHARS = re.compile(r"[^A-Za-z0-9.-]+")
_SHORT_NAME = re.compile(r"^(or|and|[A-Za-z0-9][A-Za-z0-9.+_~-]*)$", re.IGNORECASE)


def license_ref(name: str) -> str:
    """The SPDX LicenseRef for a license name with no SPDX id."""
    return "LicenseRef-" + (_REF_CHARS.sub("-", name).strip("-") or "unnamed")


# DEP-5 `X with Y exception` -> SPDX exception ids (the Autoconf and GCC ones depend on the GPL version).
_EXCEPTIONS = {
    "bison": "Bison-exception-2.2",
    "bison-2.2": "Bison-exception-2.2",
    "libtool": "Libtool-exception",
    "linux-syscall-note": "Linux-syscall-note",
    "texinfo": "Texinfo-exception",
    "font": "Font-exception-2.0",
    "autoconf": "Autoconf-exception-{gpl}",
    "gcc": "GCC-exception-{gcc}",
}
_WITH = re.compile(r"^(?P<license>.+?)\s+with\s+(?P<exception>.+?)\s+exception$", re.IGNORECASE)


def _with_exception(name: str) -> str | None:
    m = _WITH.match(name.strip())
    if not m:
        return None
    base = _DEP5_TO_SPDX.get(m["license"].strip().lower())
    exc = _EXCEPTIONS.get(m["exception"].strip().lower())
    if not base or not exc:
        return None
    gpl3 = base.startswith("GPL-3")
    exc = exc.format(gpl="3.0" if gpl3 else "2.0", gcc="3.1" if gpl3 else "2.0")
    return f"{base} WITH {exc}"


def _term(name: str, refs: dict[str, str]) -> str:
    spdx = _DEP5_TO_SPDX.get(name.lower()) or _with_exception(name)
    if spdx:
        return spdx
    ref = license_ref(name)
    refs[ref] = name
    return ref


def license_expression(licenses: Sequence[str], refs: dict[str, str]) -> str | None:
    """An SPDX expression for a package's DEP-5 license paragraphs (each `A or B`, `A and B`, `A, or B`),
    joined with AND; every LicenseRef used is added to `refs` (ref -> DEP-5 name)."""
    parts: list[str] = []
    for raw in licenses:
        text = raw.strip()
        if not text:
            continue
        tokens = [t for t in _SPLIT.split(text) if t is not None and t.strip()]
        if not all(_SHORT_NAME.match(t.strip()) or _WITH.match(t.strip()) for t in tokens):
            # not a list of short names (some copyright files put prose on the License line):
            # one LicenseRef for the line rather than one per fragment of a sentence
            tokens = [text[:120]]
        terms: list[str] = []
        ops: list[str] = []
        for tok in tokens:
            low = tok.strip().lower()
            if low in ("or", "and"):
                ops.append(low.upper())
            else:
                if len(terms) > len(ops):
                    ops.append("OR")  # `A, B` in DEP-5 is a choice
                terms.append(_term(tok.strip(), refs))
        expr = terms[0]
        for op, term in zip(ops, terms[1:], strict=False):
            expr = f"{expr} {op} {term}"
        expr = f"({expr})" if len(terms) > 1 else expr
        if expr not in parts:
            parts.append(expr)
    if not parts:
        return None
    if len(parts) == 1 and parts[0].startswith("("):
        return parts[0][1:-1]
    return " AND ".join(parts)


# -- identifiers ---------------------------------------------------------------------------------------


def purl(pkg: InstalledPackage, inv: Inventory) -> str:
    """The package URL: `pkg:deb/debian/nginx@1.22.1-9?arch=amd64&distro=debian-12` for dpkg images,
    `pkg:generic/busybox@1.36.1` for programs found in the files."""
    version = quote(pkg.version, safe=".-_~")
    if inv.kind != "dpkg":
        at = f"@{version}" if version else ""  # a hotfix has no version of its own
        return f"pkg:generic/{quote(pkg.name, safe='.-_~')}{at}"
    namespace = quote(inv.os_id or "debian", safe=".-_~")
    qualifiers = []
    if pkg.arch:
        qualifiers.append(f"arch={quote(pkg.arch, safe='.-_~')}")
    if inv.os_id and inv.os_version_id:
        qualifiers.append(f"distro={quote(f'{inv.os_id}-{inv.os_version_id}', safe='.-_~')}")
    tail = ("?" + "&".join(qualifiers)) if qualifiers else ""
    return f"pkg:deb/{namespace}/{quote(pkg.name, safe='.-_~+')}@{version}{tail}"


def public_uri(uri: str) -> str:
    """`uri` without its query and fragment (a SAS token never reaches a document) or user info."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_SPDX_HOST = re.compile(r"^[a-z0-9]+([-.][a-z0-9]+)*\.[a-z]{2,5}$", re.IGNORECASE)


def _spdx_location(uri: str) -> str:
    """SPDX 2.3 download locations are URLs on a named host (`host.tld`); a loopback, IP or file URL
    (a local build's artifacts) is NOASSERTION, with the URL kept in the comment."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https", "ftp", "sftp") and _SPDX_HOST.match(parts.hostname or ""):
        return public_uri(uri)
    return "NOASSERTION"


def _spdx_id(*parts: str) -> str:
    return "SPDXRef-" + "-".join(_REF_CHARS.sub("-", p).strip("-") for p in parts if p)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def document_namespace(image: ImageRef, inv_digest: str) -> str:
    """A unique, stable namespace for the document of one output of one run."""
    name = f"{image.template_name}/{image.run_id}/{image.output_name}/{inv_digest}"
    return f"https://imagebuilder.invalid/spdx/{quote(image.template_name)}/{quote(image.run_id)}/" + str(
        uuid.uuid5(_NAMESPACE, name)
    )


def _supplier(pkg: InstalledPackage) -> str:
    who = re.sub(r"[()]", "", pkg.maintainer).strip()
    if not who:
        return "NOASSERTION"
    name, _, mail = who.partition("<")
    mail = mail.rstrip(">").strip()
    return f"Organization: {name.strip()}" + (f" ({mail})" if mail else "")


def _os_label(inv: Inventory) -> str:
    return inv.os_name or " ".join(x for x in (inv.os_id, inv.os_version_id) if x) or "unknown"


def _artifact_name(uri: str) -> str:
    path = urlsplit(uri).path.rstrip("/")
    return path.rsplit("/", 1)[-1] or public_uri(uri)


# -- SPDX 2.3 -------------------------------------------------------------------------------------------


def spdx_document(
    inv: Inventory,
    *,
    image: ImageRef,
    source: SourceRef | None,
    artifacts: Iterable[ArtifactRef],
    created: datetime,
) -> dict[str, Any]:
    """The SPDX 2.3 JSON document of one run output."""
    refs: dict[str, str] = {}
    image_id = _spdx_id("Image", image.output_name)
    image_pkg: dict[str, Any] = {
        "SPDXID": image_id,
        "name": image.output_name,
        "versionInfo": image.run_id,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "description": f"Image built by run {image.run_id} of image template {image.template_name} "
        f"({_os_label(inv)})",
    }
    if image.sha256:
        image_pkg["checksums"] = [{"algorithm": "SHA256", "checksumValue": image.sha256}]
    if image.artifact_id and not re.search(r"\s", image.artifact_id):
        image_pkg["externalRefs"] = [
            {
                "referenceCategory": "OTHER",
                "referenceType": "azure-resource-id",
                "referenceLocator": image.artifact_id,
            }
        ]
    packages = [image_pkg]
    relationships = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": image_id}
    ]
    if source is not None:
        src_id = _spdx_id("Source", source.type)
        packages.append(
            {
                "SPDXID": src_id,
                "name": source.id,
                "versionInfo": source.version or "NOASSERTION",
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": False,
                "primaryPackagePurpose": "OPERATING-SYSTEM",
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
                "comment": f"source image ({source.type})",
            }
        )
        relationships.append(
            {"spdxElementId": image_id, "relationshipType": "DESCENDANT_OF", "relatedSpdxElement": src_id}
        )
    for n, art in enumerate(artifacts):
        art_id = _spdx_id("Artifact", str(n), _artifact_name(art.uri))
        packages.append(
            {
                "SPDXID": art_id,
                "name": _artifact_name(art.uri),
                "downloadLocation": _spdx_location(art.uri),
                "filesAnalyzed": False,
                "primaryPackagePurpose": "FILE",
                "checksums": [{"algorithm": "SHA256", "checksumValue": art.sha256}],
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "copyrightText": "NOASSERTION",
                "comment": f"customizer artifact fetched from {public_uri(art.uri)} and checksummed "
                "before the build",
            }
        )
        relationships.append(
            {
                "spdxElementId": art_id,
                "relationshipType": "BUILD_DEPENDENCY_OF",
                "relatedSpdxElement": image_id,
            }
        )
    used: set[str] = set()
    for pkg in [*inv.packages, *inv.components]:
        pkg_id = _spdx_id("Package", inv.kind, pkg.name, pkg.arch)
        if pkg_id in used:  # `+` and `-` both become `-`: keep ids unique
            pkg_id = f"{pkg_id}-{len(used)}"
        used.add(pkg_id)
        expr = license_expression(pkg.licenses, refs)
        entry: dict[str, Any] = {
            "SPDXID": pkg_id,
            "name": pkg.name,
            "versionInfo": pkg.version,
            "supplier": _supplier(pkg),
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": expr or "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": purl(pkg, inv),
                }
            ],
        }
        if pkg.homepage.startswith(("http://", "https://")):
            entry["homepage"] = pkg.homepage
        if pkg.source_name:
            entry["sourceInfo"] = f"built package from: {pkg.source_name} {pkg.source_version or pkg.version}"
        packages.append(entry)
        relationships.append(
            {"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": pkg_id}
        )
    files = []
    for n, f in enumerate(inv.files):
        file_id = _spdx_id("File", str(n), f.path)
        files.append(
            {
                "SPDXID": file_id,
                "fileName": "./" + f.path.lstrip("/"),
                "checksums": [
                    {"algorithm": "SHA1", "checksumValue": f.sha1},
                    {"algorithm": "SHA256", "checksumValue": f.sha256},
                ],
                "licenseConcluded": "NOASSERTION",
                "copyrightText": "NOASSERTION",
            }
        )
        relationships.append(
            {"spdxElementId": image_id, "relationshipType": "CONTAINS", "relatedSpdxElement": file_id}
        )
    doc: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{image.template_name}-{image.run_id}-{image.output_name}",
        "documentNamespace": document_namespace(image, image.sha256 or ""),
        "creationInfo": {"created": _iso(created), "creators": [f"Tool: {TOOL}"]},
        "packages": packages,
        "relationships": relationships,
    }
    if files:
        doc["files"] = files
        # Files belong to the image package: SPDX then wants it analyzed, with a verification code
        # (SHA-1 over the sorted SHA-1s of its files).
        image_pkg["filesAnalyzed"] = True
        image_pkg["packageVerificationCode"] = {
            "packageVerificationCodeValue": hashlib.sha1(  # noqa: S324 - SPDX 2.3 defines it with SHA-1
                "".join(sorted(f.sha1 for f in inv.files)).encode()
            ).hexdigest()
        }
    if refs:
        doc["hasExtractedLicensingInfos"] = [
            {
                "licenseId": ref,
                "name": name,
                "extractedText": f"The license named '{name}' in a Debian machine-readable copyright file "
                "(usr/share/doc/<package>/copyright) of the image.",
            }
            for ref, name in sorted(refs.items())
        ]
    return doc


# -- CycloneDX 1.5 --------------------------------------------------------------------------------------


def _bom_ref(*parts: str) -> str:
    return ":".join(p for p in parts if p)


def cyclonedx_document(
    inv: Inventory,
    *,
    image: ImageRef,
    source: SourceRef | None,
    artifacts: Iterable[ArtifactRef],
    created: datetime,
) -> dict[str, Any]:
    """The CycloneDX 1.5 JSON document of one run output."""
    image_ref = _bom_ref("image", image.output_name)
    image_comp: dict[str, Any] = {
        "bom-ref": image_ref,
        "type": "operating-system",
        "name": image.output_name,
        "version": image.run_id,
        "description": f"Image built by run {image.run_id} of image template {image.template_name} "
        f"({_os_label(inv)})",
    }
    if image.sha256:
        image_comp["hashes"] = [{"alg": "SHA-256", "content": image.sha256}]
    components: list[dict[str, Any]] = []
    depends: list[str] = []
    if source is not None:
        components.append(
            {
                "bom-ref": _bom_ref("source", source.type),
                "type": "operating-system",
                "name": source.id,
                "version": source.version or "",
                "description": f"source image ({source.type})",
            }
        )
        depends.append(_bom_ref("source", source.type))
    for n, art in enumerate(artifacts):
        ref = _bom_ref("artifact", str(n), _artifact_name(art.uri))
        components.append(
            {
                "bom-ref": ref,
                "type": "file",
                "name": _artifact_name(art.uri),
                "hashes": [{"alg": "SHA-256", "content": art.sha256}],
                "externalReferences": [{"type": "distribution", "url": public_uri(art.uri)}],
                "description": "customizer artifact, fetched and checksummed before the build",
            }
        )
        depends.append(ref)
    for pkg in [*inv.packages, *inv.components]:
        locator = purl(pkg, inv)
        refs: dict[str, str] = {}
        expr = license_expression(pkg.licenses, refs)
        comp: dict[str, Any] = {
            "bom-ref": locator,
            "type": "library" if inv.kind == "dpkg" else "application",
            "name": pkg.name,
            "version": pkg.version,
            "purl": locator,
        }
        if expr:
            comp["licenses"] = [{"expression": expr}]
        if pkg.maintainer:
            comp["publisher"] = pkg.maintainer
        components.append(comp)
        depends.append(locator)
    for n, f in enumerate(inv.files):
        ref = _bom_ref("file", str(n))
        components.append(
            {
                "bom-ref": ref,
                "type": "file",
                "name": "./" + f.path.lstrip("/"),
                "hashes": [{"alg": "SHA-1", "content": f.sha1}, {"alg": "SHA-256", "content": f.sha256}],
            }
        )
        depends.append(ref)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": "urn:uuid:"
        + str(uuid.uuid5(_NAMESPACE, document_namespace(image, image.sha256 or ""))),
        "version": 1,
        "metadata": {
            "timestamp": _iso(created),
            "tools": {
                "components": [{"type": "application", "name": "imagebuilder-functions", "version": "0.1.0"}]
            },
            "component": image_comp,
        },
        "components": components,
        "dependencies": [
            {"ref": image_ref, "dependsOn": depends},
            *({"ref": d} for d in depends),
        ],
    }
