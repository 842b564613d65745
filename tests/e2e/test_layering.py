"""Golden images layered: a department builds on the platform team's image, taken from the local
image store (ManagedImage source) and from the local gallery (SharedImageVersion source), with a Shell
customizer fetched from a scriptUri and checked against its sha256."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import E2E, check_vhd, file_path

pytestmark = pytest.mark.slow

ARM = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/imagebuilder-demo/providers/Microsoft.Compute"


def outputs(e2e: E2E, name: str) -> dict[str, dict[str, object]]:
    return {o["name"]: o["properties"] for o in e2e.api.run_outputs(name)}


def test_layered_builds_from_the_image_store_and_the_gallery(e2e: E2E) -> None:
    base = e2e.template(
        "busybox-webpage.json",
        validate={},
        distribute=[
            {
                "type": "ManagedImage",
                "runOutputName": "base-managed",
                "imageId": f"{ARM}/images/layer-base",
                "location": "westeurope",
            },
            {
                "type": "SharedImage",
                "runOutputName": "base-gallery",
                "galleryImageId": f"{ARM}/galleries/demoGallery/images/layer-base",
                "targetRegions": [{"name": "westeurope"}],
            },
        ],
    )
    assert e2e.build("layer-base", base)["runState"] == "Succeeded"
    version_id = str(outputs(e2e, "layer-base")["base-gallery"]["artifactId"])

    # from the local image store, with the example's scriptUri customizer
    team = e2e.template("busybox-layered.json")
    team["properties"]["source"]["imageId"] = f"{ARM}/images/layer-base"
    final = e2e.build("layer-team", team)
    assert final["runState"] == "Succeeded", final
    vhd = check_vhd(file_path(str(outputs(e2e, "layer-team")["team-vhd"]["artifactUri"])))
    assert b"Hello from a golden image" in (vhd.read("/srv/www/index.html") or b""), "the base layer"
    assert vhd.read("/etc/team-release") == b"team image: built on the platform baseline\n", "the team layer"
    assert vhd.read("/srv/www/team/index.html") == b"<p>team page</p>\n"
    record = e2e.latest_run("layer-team")
    assert record.details["source"]["type"] == "ManagedImage"

    # from the gallery image version
    from_gallery = e2e.template(
        "busybox-layered.json",
        source={"type": "SharedImageVersion", "imageVersionId": version_id},
        customize=[
            {
                "type": "Shell",
                "name": "mark",
                "inline": ["echo from-gallery | sudo tee /etc/layer >/dev/null"],
            }
        ],
        validate={},
        distribute=[{"type": "VHD", "runOutputName": "gallery-vhd"}],
    )
    final = e2e.build("layer-gallery", from_gallery)
    assert final["runState"] == "Succeeded", final
    vhd = check_vhd(file_path(str(outputs(e2e, "layer-gallery")["gallery-vhd"]["artifactUri"])))
    assert vhd.read("/etc/layer") == b"from-gallery\n"
    assert vhd.exists("/srv/www/index.html")
    e2e.assert_no_leaks()
