"""Checks of a run's SBOM and provenance shared by the end-to-end tests: the documents come from the
HTTP API, the truth from the image itself (debugfs reads the VHD's dpkg database)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from tests.e2e.conftest import E2E, ROOT, Vhd


def get_json(e2e: E2E, name: str, suffix: str) -> Any:
    resp = e2e.api.request("GET", e2e.api.template_path(name) + suffix)
    assert resp.status == 200, (suffix, resp.status, resp.body)
    return resp.body


def dpkg_versions(vhd: Vhd) -> dict[str, str]:
    """name -> version of every installed package, from var/lib/dpkg/status inside the VHD."""
    status = vhd.read("/var/lib/dpkg/status")
    assert status is not None, "no dpkg database in the image"
    out = {}
    for stanza in status.decode().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" ")
        )
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            out[fields["Package"]] = fields["Version"]
    return out


def spdx_of(e2e: E2E, name: str, run_id: str, output: str, tmp: Path) -> dict[str, Any]:
    """The SPDX document of a run output, validated by spdx-tools; also checks the CycloneDX one."""
    doc = get_json(e2e, name, f"/runs/{run_id}/sbom/{output}")
    path = tmp / f"{name}-{output}.spdx.json"
    path.write_text(json.dumps(doc))
    errors = validate_full_spdx_document(parse_file(str(path)))
    assert errors == [], [e.validation_message for e in errors][:5]
    cdx = get_json(e2e, name, f"/runs/{run_id}/sbom/{output}?format=cyclonedx")
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(cdx)) is None
    return doc


def packages(doc: dict[str, Any]) -> dict[str, str]:
    """name -> version of the packages an SPDX document lists with a deb purl."""
    out = {}
    for pkg in doc["packages"]:
        refs = [r["referenceLocator"] for r in pkg.get("externalRefs", []) if r["referenceType"] == "purl"]
        if refs and refs[0].startswith("pkg:deb/"):
            out[pkg["name"]] = pkg["versionInfo"]
    return out


def verify(
    envelope: dict[str, Any], key: Path, artifact: Path, tmp: Path
) -> subprocess.CompletedProcess[str]:
    env_file = tmp / "provenance.json"
    env_file.write_text(json.dumps(envelope))
    return subprocess.run(
        [sys.executable, "-m", "imagebuilder.provenance", "verify", "--provenance", str(env_file),
         "--key", str(key), str(artifact)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip


def check_provenance(e2e: E2E, name: str, run_id: str, vhd: Path, tmp: Path) -> None:
    """The untouched VHD verifies; a copy with one byte changed does not."""
    envelope = get_json(e2e, name, f"/runs/{run_id}/provenance")
    key = e2e.provider_state / "keys" / "provenance-ed25519.pub.pem"
    ok = verify(envelope, key, vhd, tmp)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    tampered = tmp / "tampered.vhd"
    subprocess.run(["cp", "--sparse=always", str(vhd), str(tampered)], check=True)
    with tampered.open("r+b") as fh:
        fh.seek(1 << 20)
        byte = fh.read(1)
        fh.seek(1 << 20)
        fh.write(bytes([byte[0] ^ 0x01]))
    bad = verify(envelope, key, tampered, tmp)
    tampered.unlink()
    assert bad.returncode == 1 and "FAIL" in bad.stdout, bad.stdout + bad.stderr
