"""The demo template (examples/templates/debian12-webserver.json) end to end: Debian 12 base, a File
and a Shell customizer installing nginx, inVMValidations in the booted image (QEMU, TCG), a gallery
image version in two regions and a VHD; then the image itself is inspected."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import E2E, check_vhd, file_path
from tests.e2e.sbom_checks import check_provenance, dpkg_versions, get_json, packages, spdx_of

pytestmark = [pytest.mark.slow, pytest.mark.boot]


def test_debian_webserver_demo_builds_boots_and_distributes(e2e: E2E, tmp_path: Path) -> None:
    name = "debian12-webserver"
    # the session scales build timeouts by 0.05 (see conftest): 960 minutes leaves 48 for a cold base
    template = e2e.template("debian12-webserver.json", buildTimeoutInMinutes=960)
    final = e2e.build(name, template, timeout=1800)
    assert final["runState"] == "Succeeded", final
    outputs = {o["name"]: o["properties"] for o in e2e.api.run_outputs(name)}
    gallery = outputs["debian12-web-gallery"]
    assert gallery["provisioningState"] == "Succeeded"
    assert "/galleries/demoGallery/images/debian12-web/versions/1." in gallery["artifactId"]
    assert [r["region"] for r in gallery["regions"]] == ["westeurope", "northeurope"]

    record = e2e.latest_run(name)
    assert record.details["source"]["id"].startswith("Debian:debian-12:12")
    log = e2e.log_text(name)
    assert "==> validate.inVMValidations: succeeded" in log
    assert "[validate] boot validation passed" in log, "the validations ran in the booted image"

    vhd = check_vhd(file_path(outputs["debian12-web-vhd"]["artifactUri"]))
    page = vhd.read("/var/www/html/index.html")
    assert page is not None and b"Hello from a golden image" in page
    assert vhd.exists("/usr/sbin/nginx")
    assert vhd.exists("/etc/systemd/system/multi-user.target.wants/nginx.service")
    assert vhd.read("/etc/machine-id") == b""
    assert not vhd.exists("/tmp/index.html")

    # the SBOM lists what dpkg says is inside the VHD, and the signed provenance names the VHD
    run_id = record.run.run_id
    doc = spdx_of(e2e, name, run_id, "debian12-web-vhd", tmp_path)
    in_image = dpkg_versions(vhd)
    assert packages(doc)["nginx"] == in_image["nginx"]
    assert packages(doc) == in_image
    run = get_json(e2e, name, f"/runs/{run_id}")["properties"]
    assert set(run["sbom"]) == {"debian12-web-gallery", "debian12-web-vhd"}
    assert run["details"]["freshness"]["suite"] == "bookworm-security"
    check_provenance(e2e, name, run_id, vhd.path, tmp_path)
    e2e.assert_no_leaks()


def test_sbom_changes_when_a_customizer_installs_one_more_package(e2e: E2E, tmp_path: Path) -> None:
    """A small layered build on the demo's gallery image (no second Debian base, no boot): one more
    package in the image is one more package in its SBOM."""
    name = "debian12-web-plus"
    gallery = e2e.template("debian12-webserver.json")["properties"]["distribute"][0]["galleryImageId"]
    template = e2e.template(
        "debian12-webserver.json",
        buildTimeoutInMinutes=960,
        source={"type": "SharedImageVersion", "imageVersionId": f"{gallery}/versions/latest"},
        customize=[
            {
                "type": "Shell",
                "name": "one more package",
                "inline": [
                    "set -e",
                    "sudo apt-get update",
                    "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tree",
                    "sudo apt-get clean",
                ],
            }
        ],
        validate={},
        distribute=[{"type": "VHD", "runOutputName": "plus-vhd"}],
    )
    final = e2e.build(name, template, timeout=1800)
    assert final["runState"] == "Succeeded", final
    before = spdx_of(e2e, "debian12-webserver", e2e.latest_run("debian12-webserver").run.run_id,
                     "debian12-web-vhd", tmp_path)  # fmt: skip
    after = spdx_of(e2e, name, e2e.latest_run(name).run.run_id, "plus-vhd", tmp_path)
    added = set(packages(after)) - set(packages(before))
    assert added == {"tree"}, added
    assert set(packages(before)) - set(packages(after)) == set()
    vhd = check_vhd(file_path(str(e2e.api.run_outputs(name)[0]["properties"]["artifactUri"])))
    assert packages(after) == dpkg_versions(vhd)
    rels = {r["relationshipType"] for r in after["relationships"]}
    assert "DESCENDANT_OF" in rels
    e2e.assert_no_leaks()
