"""The demo template (examples/templates/debian12-webserver.json) end to end: Debian 12 base, a File
and a Shell customizer installing nginx, inVMValidations in the booted image (QEMU, TCG), a gallery
image version in two regions and a VHD; then the image itself is inspected."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import E2E, check_vhd, file_path

pytestmark = [pytest.mark.slow, pytest.mark.boot]


def test_debian_webserver_demo_builds_boots_and_distributes(e2e: E2E) -> None:
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
    e2e.assert_no_leaks()
