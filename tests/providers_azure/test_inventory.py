"""The Azure provider's SBOM inventory: the in-VM script runs here for real under bash against this host's
dpkg database and reads what `providers/local/sbom.py` reads from a tree; through the provider (fake ARM,
append blobs) it runs before generalize and comes back from capture as `image["inventory"]`, with the
freshness record from a security mirror served here."""

from __future__ import annotations

import http.server
import lzma
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.provenance.sbom import ImageRef, Inventory, purl, spdx_document
from imagebuilder.providers.azure import inventory, scripts
from imagebuilder.providers.local.sbom import read_inventory
from tests.providers_azure.conftest import ListLog, RecordingProvider, build_input, linux_template
from tests.providers_azure.fake_arm import FakeArm, FakeCredential, default_guest
from tests.providers_azure.test_service_rules import _ready_env, settle_in_time

needs_dpkg = pytest.mark.skipif(
    not shutil.which("dpkg-query") or not Path("/var/lib/dpkg/status").is_file(), reason="no dpkg here"
)


def _run_here(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "inventory.sh"
    path.write_text(script)
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def host_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    ran = _run_here(scripts.inventory_linux(), tmp_path_factory.mktemp("inv"))
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


@needs_dpkg
def test_the_vm_script_reads_what_the_local_provider_reads_from_a_tree(host_output: str) -> None:
    from_vm = inventory.parse(host_output)
    from_tree = read_inventory(Path("/"))
    assert from_vm is not None and from_vm.kind == "dpkg" == from_tree.kind
    assert len(from_vm.packages) > 50
    assert from_vm == from_tree  # name, version, arch, source, maintainer, homepage, licenses: all of it
    assert any(p.licenses for p in from_vm.packages)


def test_an_inventory_cut_short_is_refused_and_an_image_without_dpkg_has_none() -> None:
    begin, end = scripts.INVENTORY_BEGIN, scripts.INVENTORY_END
    with pytest.raises(inventory.InventoryError, match="cut short"):
        inventory.parse(f"{begin}\nP\tbash\t5.2-1\tamd64\t\tme\t\tinstall ok installed\n")
    with pytest.raises(inventory.InventoryError, match="start marker"):
        inventory.parse("P\tbash\t5.2-1\n" + end)
    assert inventory.parse(f"{begin}\nO\tID=fedora\n{end}\n") is None
    parsed = inventory.parse(
        f'noise\n{begin}\nO\tID=debian\nO\tVERSION_ID="12"\n'
        "P\tbash\t5.2.15-2+b2\tamd64\t\tMatthias Klose <doko@debian.org>\thttp://tiswww.case.edu\t"
        "install ok installed\n"
        "P\tgone\t1.0\tamd64\t\t\t\tdeinstall ok config-files\n"
        "L\tbash\tGPL-3+\nL\tbash\tGPL-3+\nL\tbash\tBSD-4-clause-UC\n"
        f"{end}\ntrailing\n"
    )
    assert parsed is not None and [p.name for p in parsed.packages] == ["bash"]  # config-files only: not
    assert parsed.packages[0].licenses == ["GPL-3+", "BSD-4-clause-UC"]
    assert purl(parsed.packages[0], parsed) == "pkg:deb/debian/bash@5.2.15-2%2Bb2?arch=amd64&distro=debian-12"


def test_windows_programs_and_hotfixes_become_an_inventory_the_same_builders_serve() -> None:
    script = scripts.inventory_windows()
    assert "Get-HotFix" in script and "WOW6432Node" in script and "CurrentVersion\\Uninstall" in script
    output = (
        f"{scripts.INVENTORY_BEGIN}\r\n"
        "O\tID=windows\r\nO\tVERSION_ID=10.0.20348\r\nO\tPRETTY_NAME=Microsoft Windows Server 2022 Datacenter\r\n"
        "W\tMicrosoft Edge\t131.0.2903.70\t\tMicrosoft Corporation\thttps://www.microsoft.com/edge\r\n"
        "W\t7-Zip 24.08\t24.08\tx86\tIgor Pavlov\t\r\n"
        "H\tKB5044281\tSecurity Update\r\n"
        f"{scripts.INVENTORY_END}\r\n"
    )
    inv = inventory.parse(output)
    assert inv is not None and inv.kind == "windows" and inv.os_name.startswith("Microsoft Windows Server")
    by_name = {p.name: p for p in inv.packages}
    assert (
        by_name["7-Zip 24.08"].arch == "x86"
        and by_name["Microsoft Edge"].maintainer == "Microsoft Corporation"
    )
    assert purl(by_name["KB5044281"], inv) == "pkg:generic/KB5044281"  # a hotfix has no version
    doc = spdx_document(
        inv, image=ImageRef(template_name="t", run_id="r", output_name="o"), source=None, artifacts=[],
        created=__import__("datetime").datetime(2026, 12, 6, tzinfo=__import__("datetime").UTC),
    )  # fmt: skip
    names = {p["name"] for p in doc["packages"]}
    assert {"Microsoft Edge", "7-Zip 24.08", "KB5044281"} <= names


@pytest.fixture
def security_mirror(host_output: str) -> Iterator[str]:
    """A Debian security mirror whose suite has a newer bash than this host's."""
    inv = inventory.parse(host_output)
    assert inv is not None
    bash = inv.package("bash")
    assert bash is not None
    index = f"Package: bash\nVersion: {bash.version}+sec1\nArchitecture: {bash.arch}\n\n"
    data = lzma.compress(index.encode())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.endswith("/Packages.xz") and "-security/main/binary-" in self.path:
                self.server.paths.append(self.path)  # type: ignore[attr-defined]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/security"
    server.shutdown()
    server.server_close()


UBUNTU = {
    "ID": "ubuntu",
    "VERSION_ID": '"24.04"',
    "VERSION_CODENAME": "noble",
    "PRETTY_NAME": '"Ubuntu 24.04 LTS"',
}


@needs_dpkg
@pytest.mark.parametrize("distro", ["debian", "ubuntu"])
def test_a_build_lists_the_image_before_generalize_and_capture_returns_it(
    arm: FakeArm, clock: Any, tmp_path: Path, security_mirror: str, host_output: str, distro: str
) -> None:
    def guest(vm: str, name: str, script: str) -> tuple[int, str, str]:
        if name == "ib-inventory":  # the script runs for real, on this host's dpkg database
            ran = _run_here(script, tmp_path)
            out = ran.stdout
            if distro == "ubuntu":  # as if this host were an Ubuntu VM: its os-release says so
                body = [line for line in out.split("\n") if not line.startswith("O\t")]
                out = "\n".join([body[0], *(f"O\t{k}={v}" for k, v in UBUNTU.items()), *body[1:]])
            return ran.returncode, out, ran.stderr
        return default_guest(vm, name, script)

    arm.guest = guest
    arm.chunk = 1 << 20
    provider = RecordingProvider(
        credential=FakeCredential(), transport=arm, sleep=clock.sleep, clock=clock,
        environ={"AzureWebJobsStorage__accountName": "stibapp",
                 f"IMAGEBUILDER_{distro.upper()}_SECURITY_MIRROR": security_mirror},
    )  # fmt: skip
    build, env, log = _ready_env(provider, arm)
    generalized, _ = settle_in_time(provider, provider.generalize(build, env, log), log, clock)
    assert generalized.status == "succeeded", generalized
    names = list(arm.scripts)
    assert names.index("ib-inventory") < names.index("ib-generalize")  # read while the guest still ran
    assert "dpkg-query -W" in arm.scripts["ib-inventory"]
    assert "IMAGEBUILDER-INVENTORY" not in log.text.replace("[sbom]", "")  # data, not log lines
    captured, _ = settle_in_time(provider, provider.capture(build, env, log), log, clock)
    assert captured.status == "succeeded", captured
    inv = Inventory.model_validate(captured.image["inventory"])
    tree = read_inventory(Path("/"))
    if distro == "ubuntu":
        assert (inv.os_id, inv.os_codename, inv.os_name) == ("ubuntu", "noble", "Ubuntu 24.04 LTS")
        tree = tree.model_copy(
            update={k: getattr(inv, k) for k in ("os_id", "os_version_id", "os_codename", "os_name")}
        )
    assert inv == tree  # the same shape and content the local provider produces
    assert f"[sbom] inventory: {len(inv.packages)} package(s)" in log.text
    fresh = captured.image["freshness"]
    assert fresh["securityUpdatesPending"] == 1 and fresh["packages"][0]["name"] == "bash", fresh
    assert fresh["mirror"] == security_mirror
    codename = "noble" if distro == "ubuntu" else tree.os_codename
    assert fresh["suite"] == f"{codename}-security"
    assert arm.problems == []


def test_without_the_apps_storage_account_no_inventory_is_taken(provider, arm, clock) -> None:
    log = ListLog()
    build = build_input(linux_template())
    build, env, log = _ready_env(provider, arm)
    settle_in_time(provider, provider.generalize(build, env, log), log, clock)
    captured, _ = settle_in_time(provider, provider.capture(build, env, log), log, clock)
    assert captured.status == "succeeded" and "inventory" not in captured.image
    assert "ib-inventory" not in arm.scripts
    assert "Run Command keeps only 4 KB" in log.text
