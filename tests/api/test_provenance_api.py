"""The SBOM and provenance routes on a run the store holds: SPDX and CycloneDX documents validated by
their official libraries, a DSSE envelope that verifies the artifact, the link from the run, and errors
that say what is missing."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.provenance.keys import key_paths
from imagebuilder.provenance.sbom import InstalledPackage, Inventory
from imagebuilder.provenance.slsa import VerificationError
from imagebuilder.provenance.verify import verify_artifact
from imagebuilder.store import open_store
from local_runtime.azurite import Azurite
from tests.api.conftest import Direct, minimal_template, template_url

RUN_ID = "20261206000000-sbom0001"


@pytest.fixture
def recorded_run(direct: Direct, api_azurite: Azurite, sub: str, tmp_path: Path) -> tuple[RunRef, Path]:
    direct.put(template_url(sub), minimal_template())
    st = open_store(api_azurite.connection_string)
    ref = RunRef(subscription_id=sub, resource_group="rg1", template_name="t1", run_id=RUN_ID)
    snapshot = direct.get(template_url(sub)).json
    st.runs.create(ref, template_snapshot=snapshot)
    disk = tmp_path / "disk.vhd"
    disk.write_bytes(b"\0" * 8192 + b"image")
    sha = hashlib.sha256(disk.read_bytes()).hexdigest()
    st.runs.set_status(
        ref,
        run_state="Succeeded",
        message="done",
        details={
            "source": {
                "type": "PlatformImage",
                "id": "Canonical:jammy:22_04:1.2.3",
                "exact_version": "1.2.3",
            },
            "artifacts": [
                {"uri": "https://example.com/s.sh?sig=X", "sha256": "a" * 64, "size": 3, "location": "x"}
            ],
            "capture": {"sha256": sha, "size": disk.stat().st_size},
            "sbom": {"kind": "dpkg", "packages": 1},
        },
    )
    uri = disk.as_uri()
    st.runs.put_output(
        ref,
        "vhd1",
        {"artifactUri": uri, "provisioningState": "Succeeded",
         "regions": [{"region": "westus", "status": "succeeded", "artifactUri": uri}]},
    )  # fmt: skip
    inv = Inventory(
        kind="dpkg", os_id="debian", os_version_id="12", os_codename="bookworm",
        packages=[InstalledPackage(name="nginx", version="1.22.1-9", arch="amd64", licenses=["BSD-2-clause"])],
    )  # fmt: skip
    st.runs.put_sbom_inventory(ref, inv.model_dump(mode="json"))
    return ref, disk


def test_sbom_documents_of_a_run_output(
    direct: Direct, sub: str, recorded_run: tuple[RunRef, Path], tmp_path: Path
) -> None:
    spdx = direct.get(template_url(sub, suffix=f"/runs/{RUN_ID}/sbom/vhd1"))
    assert spdx.status == 200, spdx.text
    (tmp_path / "d.json").write_text(spdx.text)
    assert validate_full_spdx_document(parse_file(str(tmp_path / "d.json"))) == []
    assert "sig=X" not in spdx.text
    nginx = next(p for p in spdx.json["packages"] if p["name"] == "nginx")
    assert nginx["versionInfo"] == "1.22.1-9"
    cdx = direct.get(template_url(sub, suffix=f"/runs/{RUN_ID}/sbom/vhd1") + "&format=cyclonedx")
    assert cdx.status == 200 and JsonStrictValidator(SchemaVersion.V1_5).validate_str(cdx.text) is None
    assert spdx.text == direct.get(template_url(sub, suffix=f"/runs/{RUN_ID}/sbom/vhd1")).text, "stable"

    bad = direct.get(template_url(sub, suffix=f"/runs/{RUN_ID}/sbom/vhd1") + "&format=xml")
    assert bad.status == 400 and bad.json["error"]["target"] == "format"
    missing = direct.get(template_url(sub, suffix=f"/runs/{RUN_ID}/sbom/nope"))
    assert missing.status == 404 and "vhd1" in missing.json["error"]["message"]
    run = direct.get(template_url(sub, suffix=f"/runs/{RUN_ID}")).json["properties"]
    assert run["sbom"]["vhd1"].endswith(f"/runs/{RUN_ID}/sbom/vhd1")
    assert run["provenance"].endswith(f"/runs/{RUN_ID}/provenance")


def test_provenance_verifies_the_artifact(
    direct: Direct,
    sub: str,
    recorded_run: tuple[RunRef, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("IMAGEBUILDER_STATE_DIR", str(state))
    resp = direct.get(template_url(sub, suffix=f"/runs/{RUN_ID}/provenance"))
    assert resp.status == 200, resp.text
    envelope = resp.json
    stmt = json.loads(base64.b64decode(envelope["payload"]))
    assert stmt["subject"][0]["name"] == recorded_run[1].as_uri()
    deps = stmt["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[0]["annotations"]["version"] == "1.2.3"
    assert deps[1] == {"uri": "https://example.com/s.sh", "digest": {"sha256": "a" * 64}}
    assert len(stmt["predicate"]["buildDefinition"]["externalParameters"]["templateFingerprint"]) == 64
    public = key_paths(state)[1].read_bytes()
    assert verify_artifact(envelope, public, recorded_run[1]).subject == recorded_run[1].as_uri()
    recorded_run[1].write_bytes(recorded_run[1].read_bytes()[:-1] + b"X")
    with pytest.raises(VerificationError):
        verify_artifact(envelope, public, recorded_run[1])


def test_a_run_without_inventory(direct: Direct, api_azurite: Azurite, sub: str) -> None:
    direct.put(template_url(sub), minimal_template())
    st = open_store(api_azurite.connection_string)
    ref = RunRef(subscription_id=sub, resource_group="rg1", template_name="t1", run_id=RUN_ID)
    st.runs.create(ref, template_snapshot={})
    st.runs.put_output(ref, "vhd1", {"provisioningState": "Failed"})
    sbom = direct.get(template_url(sub, suffix=f"/runs/{RUN_ID}/sbom/vhd1"))
    assert sbom.status == 404 and "recorded no SBOM inventory" in sbom.json["error"]["message"]
    prov = direct.get(template_url(sub, suffix=f"/runs/{RUN_ID}/provenance"))
    assert prov.status == 404 and "recorded no captured image" in prov.json["error"]["message"]
    assert "sbom" not in direct.get(template_url(sub, suffix=f"/runs/{RUN_ID}")).json["properties"]
