"""A whole Linux build through the Azure provider: prepare to cleanup, every request checked."""

from __future__ import annotations

from imagebuilder.pipeline.messages import (
    BuildEnv,
    CaptureResult,
    PrepareResult,
    ReplicationResult,
    StepResult,
)
from tests.providers_azure.conftest import (
    GALLERY_IMAGE,
    ListLog,
    build_input,
    linux_template,
    own_resources,
    settle,
)
from tests.providers_azure.fake_arm import _decoded_payloads


def test_linux_build_end_to_end(provider, arm, clock):
    log = ListLog()
    build = build_input(linux_template())

    prepared = provider.prepare(build, log)
    assert isinstance(prepared, PrepareResult) and prepared.status == "succeeded", prepared
    assert prepared.source.exact_version == "24.04.202411030"  # highest, not the last listed
    assert prepared.source.id == "Canonical:ubuntu-24_04-lts:server:24.04.202411030"
    assert {a.uri for a in prepared.artifacts} == {"https://example.com/setup.sh", "https://example.com/motd"}
    assert not [r for r in arm.requests if r[0] != "GET"], "prepare must not create anything"

    env, polls = settle(provider, provider.create_build_env(build, prepared, log), log)
    assert isinstance(env, BuildEnv) and env.handle["status"] == "ready", env
    assert polls >= 4  # NSG, VNet, NIC and VM each started an ARM operation
    vm_body = arm.vm_bodies[0]
    props = vm_body["properties"]
    assert props["hardwareProfile"]["vmSize"] == "Standard_D1_v2"
    assert props["storageProfile"]["imageReference"] == {
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "24.04.202411030",
    }
    assert "plan" not in vm_body and "identity" not in vm_body
    nsg = next(r for r in arm.resources.values() if r["type"] == "Microsoft.Network/networkSecurityGroups")
    assert nsg["properties"]["securityRules"] == []
    assert not [r for r in arm.resources.values() if r["type"] == "Microsoft.Network/publicIPAddresses"]
    staging = next(
        r
        for r in arm.resources.values()
        if r["type"] == "Microsoft.Resources/resourceGroups" and r["name"].startswith("IT_")
    )
    assert staging["name"].startswith("IT_myResourceGroup_myImageTemplate_")
    assert staging["tags"]["costcenter"] == "42" and staging["tags"]["imagebuilder-run"] == "run-0001"

    for index in range(3):
        step, _ = settle(provider, provider.customize(build, env, index, log), log)
        assert isinstance(step, StepResult) and step.status == "succeeded", step
    assert "sha256sum" in arm.scripts["ib-customize-1"]
    assert prepared.artifacts[0].sha256 in arm.scripts["ib-customize-1"]
    assert "/etc/motd" in arm.scripts["ib-customize-2"]
    assert "ran ib-customize-0 on" in log.text  # run command output reached the log

    validated, _ = settle(provider, provider.validate(build, env, log), log)
    assert validated.status == "succeeded"

    generalized, polls = settle(provider, provider.generalize(build, env, log), log)
    assert generalized.status == "succeeded", generalized
    # waagent -deprovision stops the agent: it ran detached, the run command reported, the VM powered off
    assert arm.effects["ib-generalize"] == "poweroff"
    payload = "\n".join(_decoded_payloads(arm.scripts["ib-generalize"]))
    assert "/usr/sbin/waagent -force -deprovision+user && export HISTSIZE=0 && sync" in payload  # AIB's
    assert "/tmp/DeprovisioningScript.sh" in payload  # AIB's user override
    vm = next(r for r in arm.resources.values() if r["type"] == "Microsoft.Compute/virtualMachines")
    assert {"PowerState/deallocated", "OSState/generalized"} <= set(vm["_view"]["statuses"])
    assert polls < 12

    captured, _ = settle(provider, provider.capture(build, env, log), log)
    assert isinstance(captured, CaptureResult) and captured.status == "succeeded", captured

    west, _ = settle(provider, provider.distribute(build, captured, 0, "westus", log), log)
    east, _ = settle(provider, provider.distribute(build, captured, 0, "East US", log), log)
    for result in (west, east):
        assert isinstance(result, ReplicationResult) and result.status == "succeeded", result
        assert (
            result.artifact_id == f"{GALLERY_IMAGE}/versions/1.3.1"
        )  # one above the highest (1.3.0), excluded or not
    version = arm.resources[f"{GALLERY_IMAGE}/versions/1.3.1".lower()]
    publishing = version["properties"]["publishingProfile"]
    assert publishing["excludeFromLatest"] is True
    assert publishing["targetRegions"][0] == {
        "name": "West US",
        "regionalReplicaCount": 2,
        "storageAccountType": "Standard_LRS",
    }
    assert publishing["targetRegions"][1]["storageAccountType"] == "Standard_ZRS"
    assert version["tags"]["team"] == "img"

    managed, _ = settle(provider, provider.distribute(build, captured, 1, "westus", log), log)
    assert managed.status == "succeeded" and managed.artifact_id.endswith("/images/out")
    vhd, _ = settle(provider, provider.distribute(build, captured, 2, "westus", log), log)
    assert (
        vhd.status == "succeeded" and vhd.artifact_uri == "https://acct.blob.core.windows.net/vhds/out.vhd"
    ), vhd
    assert "SECRET" not in log.text

    report = provider.cleanup(build, keep=False, log=log)
    assert report.errors == [], report
    assert own_resources(arm) == [r for r in own_resources(arm) if "/images/out" in r or "/versions/" in r]
    deletes = [path.lower() for method, path, _, _ in arm.requests if method == "DELETE"]
    order = [
        next(i for i, p in enumerate(deletes) if key in p)
        for key in ("/virtualmachines/", "/virtualnetworks/", "/networksecuritygroups/")
    ]
    assert order == sorted(order)
    assert deletes[-1].endswith(staging["name"].lower())
    assert arm.problems == []
    assert arm.slept == []  # the SDK never slept
    assert all(s <= 600 for s in clock.sleeps)
