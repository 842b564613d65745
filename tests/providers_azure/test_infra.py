"""infra/: the custom role grants every ARM action the provider performs, and the Bicep says what we promise.

No Bicep compiler could be installed here (none on PyPI, npm or Debian); `test_bicep_compiles` runs when a
`bicep` binary is on PATH and is skipped otherwise.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuilder.providers.azure.provider import find_orphans
from tests.providers_azure import test_build_flow as flow
from tests.providers_azure import test_sources_and_windows as windows
from tests.providers_azure.fake_arm import SUB, arm_action

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_arm_action_mapping():
    vm = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
    assert arm_action("PUT", vm) == "Microsoft.Compute/virtualMachines/write"
    assert arm_action("POST", vm + "/deallocate") == "Microsoft.Compute/virtualMachines/deallocate/action"
    assert arm_action("GET", vm + "/instanceView") == "Microsoft.Compute/virtualMachines/instanceView/read"
    assert arm_action("PUT", vm + "/runCommands/x") == "Microsoft.Compute/virtualMachines/runCommands/write"
    assert (
        arm_action("DELETE", f"/subscriptions/{SUB}/resourceGroups/rg")
        == "Microsoft.Resources/subscriptions/resourceGroups/delete"
    )
    assert (
        arm_action("GET", f"/subscriptions/{SUB}/resourceGroups/rg/resources")
        == "Microsoft.Resources/subscriptions/resourceGroups/resources/read"
    )


def _granted() -> set[str]:
    role = json.loads((INFRA / "imagebuilder-role.json").read_text())
    return {a.lower() for a in role["actions"]}


def test_custom_role_covers_every_request_of_a_linux_and_a_windows_build(provider, arm, clock):
    from tests.providers_azure.conftest import Clock, RecordingProvider, seed
    from tests.providers_azure.fake_arm import FakeArm, FakeCredential

    flow.test_linux_build_end_to_end(provider, arm, clock)
    find_orphans(SUB, provider=provider)
    win_arm, win_clock = FakeArm(), Clock()
    seed(win_arm)
    win = RecordingProvider(
        credential=FakeCredential(), transport=win_arm, sleep=win_clock.sleep, clock=win_clock, environ={}
    )
    windows.test_windows_powershell_restart_and_update_through_run_command(win, win_arm, win_clock)

    needed = set()
    for fake in (arm, win_arm):
        for method, path, _, _ in fake.requests:
            if path.startswith("/subscriptions/"):
                needed.add(arm_action(method, path))
    missing = sorted(a for a in needed if a.lower() not in _granted())
    assert missing == [], f"infra/imagebuilder-role.json lacks {missing}"
    # every operation URL ARM handed out may be polled (by us or by an SDK poller): each must be readable
    polled = {arm_action("GET", url) for fake in (arm, win_arm) for url in fake.poll_urls}
    assert "Microsoft.Compute/locations/DiskOperations/read" in polled  # the disk RP's own segment
    unreadable = sorted(a for a in polled if a.lower() not in _granted())
    assert unreadable == [], f"infra/imagebuilder-role.json cannot read the operations {unreadable}"
    # references made in request bodies need join/assign rights too
    for action in (
        "Microsoft.Network/networkInterfaces/join/action",
        "Microsoft.Network/virtualNetworks/subnets/join/action",
        "Microsoft.Network/networkSecurityGroups/join/action",
        "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
    ):
        assert action.lower() in _granted()
    assert not [a for a in _granted() if "*" in a], "no wildcards in a least-privilege role"


def test_bicep_promises():
    main = (INFRA / "main.bicep").read_text()
    app = (INFRA / "app.bicep").read_text()
    assert "targetScope = 'subscription'" in main and "loadJsonContent('imagebuilder-role.json')" in main
    for setting in (
        "AzureWebJobsStorage__accountName",
        "AzureWebJobsStorage__credential",
        "AzureWebJobsStorage__clientId",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "IMAGEBUILDER_PROVIDER', value: 'azure'",
        "IMAGEBUILDER_TASK_HUB",
    ):
        assert setting in app, setting
    assert "allowSharedKeyAccess: false" in app and "DisableLocalAuth: true" in app
    assert "tier: 'FlexConsumption'" in app and "runtime: { name: 'python', version: '3.11' }" in app
    assert "AccountKey" not in app and "listKeys" not in app
    assert "Microsoft.Compute/galleries" in app and "if (createGallery)" in app
    root = INFRA.parent
    assert not (INFRA / "azure.yaml").exists(), "azd wants azure.yaml at the project root"
    yaml = (root / "azure.yaml").read_text()
    assert re.search(r"^\s+path: infra$", yaml, re.M) and re.search(r"^\s+module: main$", yaml, re.M)
    assert re.search(r"^\s+project: \.$", yaml, re.M) and "host: function" in yaml
    assert "project: .." not in yaml  # a service above azure.yaml is not supported
    ignored = (root / ".funcignore").read_text().split()
    for entry in (".venv", "node_modules", ".state", "tests", "infra", "local_runtime", "spec"):
        assert entry in ignored, entry
    for needed in ("function_app.py", "host.json", "requirements.txt", "imagebuilder", "api"):
        assert needed not in ignored, needed
    params = json.loads((INFRA / "main.parameters.json").read_text())
    assert set(params["parameters"]) <= set(re.findall(r"^param (\w+)", main, re.MULTILINE))


@pytest.mark.skipif(
    shutil.which("bicep") is None, reason="no bicep compiler on PATH (not installable from PyPI/npm/Debian)"
)
def test_bicep_compiles(tmp_path):
    out = subprocess.run(
        ["bicep", "build", str(INFRA / "main.bicep"), "--outdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "main.json").read_text())["resources"]
