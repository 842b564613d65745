"""SBOM documents: SPDX 2.3 validated by spdx-tools, CycloneDX 1.5 by cyclonedx-python-lib (both the
official libraries of their formats), licenses mapped from DEP-5, no SAS token in any document."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from imagebuilder.provenance.sbom import (
    ArtifactRef,
    ImageFile,
    ImageRef,
    InstalledPackage,
    Inventory,
    SourceRef,
    cyclonedx_document,
    license_expression,
    license_ref,
    purl,
    spdx_document,
)

WHEN = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
DEBIAN = Inventory(
    kind="dpkg",
    os_id="debian",
    os_version_id="12",
    os_codename="bookworm",
    os_name="Debian GNU/Linux 12 (bookworm)",
    packages=[
        InstalledPackage(
            name="nginx",
            version="1.22.1-9+deb12u1",
            arch="amd64",
            source_name="nginx",
            maintainer="Debian Nginx Maintainers <pkg-nginx-maintainers@alioth-lists.debian.net>",
            homepage="https://nginx.org",
            licenses=[
                "BSD-2-clause",
                "GPL-2+ or Artistic",
                "public-domain",
                "Expat, or GPL-2+",
                "GPL-3+ with Bison exception",
            ],
        ),
        InstalledPackage(name="libc6", version="2.36-9+deb12u9", arch="amd64", licenses=["LGPL-2.1+"]),
        InstalledPackage(name="tzdata", version="1:2024a-0+deb12u1", arch="all"),
    ],
)
BUSYBOX = Inventory(
    kind="files",
    os_name="BusyBox",
    files=[ImageFile(path="bin/busybox", size=10, sha1="a" * 40, sha256="b" * 64)],
    components=[InstalledPackage(name="busybox", version="1.36.1", licenses=["GPL-2"])],
)
WINDOWS = Inventory(  # as the Azure provider reads it on a Windows build VM (providers/azure/inventory.py)
    kind="windows",
    os_id="windows",
    os_version_id="10.0.20348",
    os_name="Microsoft Windows Server 2022 Datacenter",
    packages=[
        InstalledPackage(name="7-Zip 24.08 (x64)", version="24.08", maintainer="Igor Pavlov"),
        InstalledPackage(name="KB5044281", version="", maintainer="Microsoft Corporation"),
    ],
)
IMAGE = ImageRef(
    template_name="web",
    run_id="r1",
    output_name="webVhd",
    artifact_id="/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/images/web",
    sha256="c" * 64,
)
SOURCE = SourceRef(type="PlatformImage", id="Debian:debian-12:12:latest", version="0.20241201.1")
ARTIFACTS = [
    ArtifactRef(uri="https://acct.blob.core.windows.net/c/setup.sh?sv=1&sig=SECRETSIG", sha256="d" * 64),
    ArtifactRef(uri="http://127.0.0.1:8080/www/index.html", sha256="e" * 64),
    ArtifactRef(uri="file:///srv/files/motd", sha256="f" * 64),
]


def _spdx(inv: Inventory, tmp_path: Path) -> dict:
    doc = spdx_document(inv, image=IMAGE, source=SOURCE, artifacts=ARTIFACTS, created=WHEN)
    path = tmp_path / "doc.spdx.json"
    path.write_text(json.dumps(doc))
    errors = validate_full_spdx_document(parse_file(str(path)))
    assert errors == [], [e.validation_message for e in errors]
    return doc


@pytest.mark.parametrize("inv", [DEBIAN, BUSYBOX, WINDOWS], ids=["debian", "busybox", "windows"])
def test_spdx_validates(inv: Inventory, tmp_path: Path) -> None:
    doc = _spdx(inv, tmp_path)
    assert "SECRETSIG" not in json.dumps(doc)
    rels = {
        (r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in doc["relationships"]
    }
    assert ("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image-webVhd") in rels
    assert ("SPDXRef-Image-webVhd", "DESCENDANT_OF", "SPDXRef-Source-PlatformImage") in rels
    artifact = next(p for p in doc["packages"] if p["name"] == "setup.sh")
    assert artifact["checksums"] == [{"algorithm": "SHA256", "checksumValue": "d" * 64}]
    assert artifact["downloadLocation"] == "https://acct.blob.core.windows.net/c/setup.sh"
    assert (artifact["SPDXID"], "BUILD_DEPENDENCY_OF", "SPDXRef-Image-webVhd") in rels
    local = next(p for p in doc["packages"] if p["name"] == "index.html")
    assert (
        local["downloadLocation"] == "NOASSERTION"
        and "http://127.0.0.1:8080/www/index.html" in local["comment"]
    )


def test_spdx_debian_packages(tmp_path: Path) -> None:
    doc = _spdx(DEBIAN, tmp_path)
    nginx = next(p for p in doc["packages"] if p["name"] == "nginx")
    assert nginx["versionInfo"] == "1.22.1-9+deb12u1"
    assert nginx["externalRefs"][0]["referenceLocator"] == (
        "pkg:deb/debian/nginx@1.22.1-9%2Bdeb12u1?arch=amd64&distro=debian-12"
    )
    assert nginx["licenseDeclared"] == (
        "BSD-2-Clause AND (GPL-2.0-or-later OR Artistic-1.0-Perl) AND LicenseRef-public-domain "
        "AND (MIT OR GPL-2.0-or-later) AND GPL-3.0-or-later WITH Bison-exception-2.2"
    )
    assert [x["licenseId"] for x in doc["hasExtractedLicensingInfos"]] == ["LicenseRef-public-domain"]
    tz = next(p for p in doc["packages"] if p["name"] == "tzdata")
    assert tz["licenseDeclared"] == "NOASSERTION"
    assert "1%3A2024a" in tz["externalRefs"][0]["referenceLocator"]


def test_spdx_is_stable_and_namespaced_per_output(tmp_path: Path) -> None:
    a = spdx_document(DEBIAN, image=IMAGE, source=SOURCE, artifacts=ARTIFACTS, created=WHEN)
    b = spdx_document(DEBIAN, image=IMAGE, source=SOURCE, artifacts=ARTIFACTS, created=WHEN)
    other = IMAGE.model_copy(update={"output_name": "gallery"})
    c = spdx_document(DEBIAN, image=other, source=SOURCE, artifacts=ARTIFACTS, created=WHEN)
    assert a == b
    assert a["documentNamespace"] != c["documentNamespace"]


@pytest.mark.parametrize("inv", [DEBIAN, BUSYBOX, WINDOWS], ids=["debian", "busybox", "windows"])
def test_cyclonedx_validates(inv: Inventory) -> None:
    doc = cyclonedx_document(inv, image=IMAGE, source=SOURCE, artifacts=ARTIFACTS, created=WHEN)
    error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(doc))
    assert error is None, error
    assert "SECRETSIG" not in json.dumps(doc)
    refs = {c["bom-ref"] for c in doc["components"]}
    top = doc["dependencies"][0]
    assert top["ref"] == doc["metadata"]["component"]["bom-ref"]
    assert set(top["dependsOn"]) == refs


def test_cyclonedx_license_expression() -> None:
    doc = cyclonedx_document(DEBIAN, image=IMAGE, source=SOURCE, artifacts=[], created=WHEN)
    libc = next(c for c in doc["components"] if c["name"] == "libc6")
    assert libc["licenses"] == [{"expression": "LGPL-2.1-or-later"}]
    assert libc["purl"] == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u9?arch=amd64&distro=debian-12"


def test_license_expressions() -> None:
    refs: dict[str, str] = {}
    assert license_expression(["GPL-2+", "GPL-2+"], refs) == "GPL-2.0-or-later"
    assert license_expression(["GPL-2+ and BSD-3-clause"], refs) == "GPL-2.0-or-later AND BSD-3-Clause"
    assert license_expression(["Some Odd/License"], refs) == "LicenseRef-Some-Odd-License"
    assert refs == {"LicenseRef-Some-Odd-License": "Some Odd/License"}
    assert license_expression([], refs) is None
    assert (
        license_expression(["GPL-3+ with Bison exception"], refs)
        == "GPL-3.0-or-later WITH Bison-exception-2.2"
    )
    assert license_expression(["GPL-2+ with Autoconf exception"], refs) == (
        "GPL-2.0-or-later WITH Autoconf-exception-2.0"
    )
    prose = "Redistribution and use in source and binary forms, with or without"
    assert license_expression([prose], refs) == license_ref(prose)
    assert license_expression(["GPL-2 with Linux-syscall-note exception", "MIT"], refs) == (
        "GPL-2.0-only WITH Linux-syscall-note AND MIT"
    )


def test_purl_of_a_found_program() -> None:
    assert purl(BUSYBOX.components[0], BUSYBOX) == "pkg:generic/busybox@1.36.1"


def test_spdx_ids_stay_unique(tmp_path: Path) -> None:
    inv = Inventory(
        kind="dpkg",
        packages=[
            InstalledPackage(name="foo+bar", version="1"),
            InstalledPackage(name="foo-bar", version="1"),
        ],
    )
    doc = _spdx(inv, tmp_path)
    ids = [p["SPDXID"] for p in doc["packages"]]
    assert len(ids) == len(set(ids))
