"""Sources (Gen2 + plan, gallery `latest`, managed image), Windows customizers, versioning, orphans."""

from __future__ import annotations

from imagebuilder.providers.azure.provider import find_orphans
from tests.providers_azure.conftest import (
    GALLERY_IMAGE,
    PREFIX,
    RUN,
    ListLog,
    build_input,
    linux_template,
    own_resources,
    settle,
)
from tests.providers_azure.fake_arm import SUB, _decoded_payloads, default_guest

WIN_IMAGE = f"{PREFIX}/rg1/providers/Microsoft.Compute/images/win2022"
SUBNET = f"{PREFIX}/netRG/providers/Microsoft.Network/virtualNetworks/corp/subnets/build"
IDENTITY = f"{PREFIX}/rg1/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder"


def test_gen2_platform_image_with_plan_identity_existing_subnet_and_disk_size(provider, arm):
    log = ListLog()
    template = linux_template(
        vmProfile={
            "osDiskSizeGB": 64,
            "userAssignedIdentities": [IDENTITY],
            "vnetConfig": {"subnetId": SUBNET},
        },
        additionalDataDisks=[{"sizeGB": 16}],
    )
    template["properties"]["source"].update(
        sku="server-gen2",
        version="24.04.202411030",
        planInfo={"planName": "server-gen2", "planProduct": "ubuntu", "planPublisher": "canonical"},
    )
    build = build_input(template)
    prepared = provider.prepare(build, log)
    assert prepared.source.hyper_v_generation == "V2"
    env, _ = settle(provider, provider.create_build_env(build, prepared, log), log)
    assert env.handle["status"] == "ready"
    body = arm.vm_bodies[0]
    assert body["properties"]["hardwareProfile"]["vmSize"] == "Standard_D2ds_v4"
    assert body["plan"] == {"name": "server-gen2", "product": "ubuntu", "publisher": "canonical"}
    assert body["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {IDENTITY: {}}}
    assert body["properties"]["storageProfile"]["osDisk"]["diskSizeGB"] == 64
    assert body["properties"]["storageProfile"]["dataDisks"][0]["diskSizeGB"] == 16
    nic = next(r for r in arm.resources.values() if r["type"] == "Microsoft.Network/networkInterfaces")
    assert nic["properties"]["ipConfigurations"][0]["properties"]["subnet"]["id"] == SUBNET
    kinds = {
        r["type"] for r in arm.resources.values() if (r.get("tags") or {}).get("imagebuilder-run") == RUN
    }
    assert (
        "Microsoft.Network/virtualNetworks" not in kinds
        and "Microsoft.Network/networkSecurityGroups" not in kinds
    )
    assert provider.cleanup(build, keep=False, log=log).errors == []
    assert own_resources(arm) == [] and arm.problems == []


def test_gallery_latest_source_is_resolved_and_source_versioning_follows_it(provider, arm):
    log = ListLog()
    template = linux_template()
    template["properties"]["source"] = {
        "type": "SharedImageVersion",
        "imageVersionId": f"{GALLERY_IMAGE}/versions/latest",
    }
    other = f"{PREFIX}/galleryRG/providers/Microsoft.Compute/galleries/myGallery/images/derived"
    arm.resources[other.lower()] = dict(arm.resources[GALLERY_IMAGE.lower()], id=other, name="derived")
    template["properties"]["distribute"] = [
        {
            "type": "SharedImage",
            "runOutputName": "src",
            "galleryImageId": other,
            "versioning": {"scheme": "Source"},
            "targetRegions": [{"name": "westus"}],
        },
        {
            "type": "SharedImage",
            "runOutputName": "clash",
            "galleryImageId": GALLERY_IMAGE,
            "versioning": {"scheme": "Source"},
        },
    ]
    build = build_input(template)
    prepared = provider.prepare(build, log)
    assert prepared.source.exact_version == "1.2.9"  # 1.3.0 is excluded from latest
    assert prepared.source.id.endswith("/versions/1.2.9")
    env, _ = settle(provider, provider.create_build_env(build, prepared, log), log)
    assert arm.vm_bodies[0]["properties"]["storageProfile"]["imageReference"] == {"id": prepared.source.id}
    settle(provider, provider.generalize(build, env, log), log)
    captured, _ = settle(provider, provider.capture(build, env, log), log)
    ok, _ = settle(provider, provider.distribute(build, captured, 0, "westus", log), log)
    assert ok.status == "succeeded" and ok.artifact_id == f"{other}/versions/1.2.9"
    clash, _ = settle(provider, provider.distribute(build, captured, 1, "westus", log), log)
    assert clash.status == "failed" and clash.error.code == "GalleryImageVersionExists"
    assert "distribute[1].versioning" in clash.error.message
    assert provider.cleanup(build, keep=False, log=log).errors == []
    assert arm.problems == []


def _windows_template():
    template = linux_template()
    template["properties"]["source"] = {"type": "ManagedImage", "imageId": WIN_IMAGE}
    template["properties"]["customize"] = [
        {
            "type": "PowerShell",
            "name": "system",
            "inline": ["Install-WindowsFeature Web-Server"],
            "runElevated": True,
            "runAsSystem": True,
        },
        {
            "type": "PowerShell",
            "name": "script",
            "scriptUri": "https://example.com/setup.ps1",
            "validExitCodes": [0, 3010],
            "runElevated": True,
        },
        {
            "type": "WindowsRestart",
            "restartCheckCommand": "powershell -command \"& {Write-Output 'restarted.'}\"",
            "restartTimeout": "10m",
        },
        {
            "type": "WindowsUpdate",
            "searchCriteria": "IsInstalled=0",
            "filters": ["exclude:$_.Title -like '*Preview*'", "include:$true"],
            "updateLimit": 40,
        },
    ]
    template["properties"]["validate"] = {}
    return template


def _seed_windows(arm):
    arm.resources[WIN_IMAGE.lower()] = {
        "id": WIN_IMAGE,
        "name": "win2022",
        "type": "Microsoft.Compute/images",
        "location": "westus",
        "tags": {},
        "properties": {
            "storageProfile": {"osDisk": {"osType": "Windows", "osState": "Generalized"}},
            "hyperVGeneration": "V2",
            "provisioningState": "Succeeded",
        },
    }
    arm.files["https://example.com/setup.ps1"] = b"Write-Output 'setup'\nexit 3010\n"


def test_windows_powershell_restart_and_update_through_run_command(provider, arm, clock):
    _seed_windows(arm)
    log = ListLog()
    build = build_input(_windows_template())
    calls = []

    def guest(vm, name, script):
        calls.append(name)
        vm_res = next(r for r in arm.resources.values() if r["type"] == "Microsoft.Compute/virtualMachines")
        if name.startswith("ib-restart-"):
            vm_res["_view"]["agent_down_reads"] = 2  # the guest agent is away while Windows reboots
            return 0, "restart scheduled\n", ""
        if name.startswith("ib-check-"):
            return 0, f"IMAGEBUILDER-BOOT epoch={int(clock.now) + 5}\nrestarted.\n", ""
        if name == "ib-customize-1":
            return 3010, "setup\n", ""
        if name == "ib-wu-3-0":
            return (
                0,
                "installed (2): KB5030216\ninstalled (2): KB5031364\nIMAGEBUILDER-WU installed=2 remaining=1 reboot=1\n",
                "",
            )
        if name == "ib-wu-3-1":
            return 0, "installed (2): KB5032198\nIMAGEBUILDER-WU installed=1 remaining=0 reboot=0\n", ""
        return default_guest(vm, name, script)

    arm.guest = guest
    prepared = provider.prepare(build, log)
    assert prepared.source.hyper_v_generation == "V2" and prepared.source.details["os_type"] == "Windows"
    env, _ = settle(provider, provider.create_build_env(build, prepared, log), log)
    body = arm.vm_bodies[0]["properties"]
    assert body["hardwareProfile"]["vmSize"] == "Standard_D2ds_v4"
    assert "windowsConfiguration" in body["osProfile"]

    results = [settle(provider, provider.customize(build, env, i, log), log)[0] for i in range(4)]
    assert [r.status for r in results] == ["succeeded"] * 4, results
    assert results[1].exit_code == 3010  # a valid exit code for that customizer
    assert results[3].details == {"passes": 2, "installed": 3}
    assert calls == [
        "ib-customize-0",
        "ib-customize-1",
        "ib-restart-2",
        "ib-check-2-0",
        "ib-wu-3-0",
        "ib-restart-wu-3-0",
        "ib-check-wu-3-0-0",
        "ib-wu-3-1",
    ]
    system = arm.scripts["ib-customize-0"]
    assert (
        "-File $script" in system and "$rc = Invoke-IbAsUser" not in system
    )  # runAsSystem: Run Command's SYSTEM
    elevated = arm.scripts["ib-customize-1"]
    admin = arm.vm_bodies[0]["properties"]["osProfile"]["adminUsername"]
    assert f"Invoke-IbAsUser $script '{admin}'" in elevated and "Get-FileHash" in elevated
    wu = arm.scripts["ib-wu-3-0"]
    assert "Microsoft.Update.Session" in wu and "$selected.Count -lt 40" in wu
    assert "restart scheduled" in log.text and "Windows Update pass 2" in log.text
    arm.finish_all()  # the deletions were started, not awaited
    left = sorted(k.rsplit("/", 1)[-1] for k in arm.resources if "/runcommands/" in k)
    assert left == ["ib-customize-0", "ib-customize-1"]  # pass and check commands were removed once read

    generalized, _ = settle(provider, provider.generalize(build, env, log), log)
    assert generalized.status == "succeeded"
    assert arm.effects["ib-generalize"] == "poweroff"  # Sysprep ran as a detached SYSTEM task
    payload = "\n".join(_decoded_payloads(arm.scripts["ib-generalize"]))
    assert "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE" in payload and "/mode:vm" in payload
    assert "Remove-Item $Env:SystemRoot\\Panther\\unattend.xml" in payload  # AIB's defaults
    assert "C:\\DeprovisioningScript.ps1" in payload  # AIB's user override
    assert provider.cleanup(build, keep=False, log=log).errors == []
    assert own_resources(arm) == [] and arm.problems == []


def test_windows_restart_times_out_when_the_vm_never_comes_back(provider, arm, clock):
    _seed_windows(arm)
    log = ListLog()
    template = _windows_template()
    template["properties"]["customize"] = [{"type": "WindowsRestart", "restartTimeout": "2m"}]
    build = build_input(template)

    def guest(vm, name, script):
        if name.startswith("ib-restart-"):
            vm_res = next(
                r for r in arm.resources.values() if r["type"] == "Microsoft.Compute/virtualMachines"
            )
            vm_res["_view"]["agent_down_reads"] = 10_000
        return 0, "", ""

    arm.guest = guest
    prepared = provider.prepare(build, log)
    env, _ = settle(provider, provider.create_build_env(build, prepared, log), log)
    result = provider.customize(build, env, 0, log)
    polls = 0
    while not hasattr(result, "status"):
        clock.sleep(result.retry_after_seconds)  # what the orchestrator's durable timer does
        result = provider.poll(result, log)
        polls += 1
    assert result.status == "failed" and result.error.code == "RestartTimeout"
    assert provider.cleanup(build, keep=False, log=log).errors == []


def test_shell_on_windows_is_refused_with_the_field(provider, arm):
    _seed_windows(arm)
    log = ListLog()
    template = _windows_template()
    template["properties"]["customize"] = [
        {"type": "Shell", "name": "oops", "inline": ["ls"]},
        {"type": "PowerShell", "name": "sys", "inline": ["whoami"], "runAsSystem": True},
    ]
    build = build_input(template)
    env, _ = settle(provider, provider.create_build_env(build, provider.prepare(build, log), log), log)
    step = provider.customize(build, env, 0, log)
    assert step.status == "failed" and step.error.code == "InvalidCustomizer"
    assert "customize[0] (oops)" in step.error.message
    assert "runAsSystem needs runElevated" in provider.customize(build, env, 1, log).error.message
    # exit codes that are not integers: the stored template cannot be read at all; prepare names the field
    template["properties"]["customize"].append(
        {"type": "PowerShell", "name": "codes", "inline": ["whoami"], "validExitCodes": ["zero"]}
    )
    bad = provider.prepare(build_input(template), log)
    assert bad.status == "failed" and "properties.customize[2].validExitCodes[0]" in bad.error.message


def test_find_orphans_lists_what_a_run_left(provider, arm):
    log = ListLog()
    build = build_input(linux_template())
    settle(provider, provider.create_build_env(build, provider.prepare(build, log), log), log)
    provider.cleanup(build, keep=True, log=log)  # errorHandling abort keeps everything
    orphans = find_orphans(SUB, provider=provider)
    types = {o["type"] for o in orphans}
    assert "Microsoft.Resources/resourceGroups" in types and "Microsoft.Compute/virtualMachines" in types
    assert {o["run"] for o in orphans} == {RUN}
    assert all(o["template"].endswith("/imageTemplates/myImageTemplate") for o in orphans)
    assert find_orphans(SUB, provider=provider, active_runs={RUN}) == []


def _trusted_gallery(arm, kind="TrustedLaunch"):
    arm.resources[GALLERY_IMAGE.lower()]["properties"]["features"] = [{"name": "SecurityType", "value": kind}]
    arm.resources[GALLERY_IMAGE.lower()]["properties"]["hyperVGeneration"] = "V2"


def test_trusted_launch_gallery_source_builds_a_trusted_launch_vm_and_publishes_from_the_vm(provider, arm):
    log = ListLog()
    _trusted_gallery(arm)
    template = linux_template()
    template["properties"]["source"] = {
        "type": "SharedImageVersion",
        "imageVersionId": f"{GALLERY_IMAGE}/versions/1.0.0",
    }
    del template["properties"]["distribute"][1]  # no managed image: a Trusted Launch VM cannot be one
    build = build_input(template)
    prepared = provider.prepare(build, log)
    env, _ = settle(provider, provider.create_build_env(build, prepared, log), log)
    props = arm.vm_bodies[0]["properties"]
    assert props["securityProfile"] == {
        "securityType": "TrustedLaunch",
        "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True},
    }
    linux = props["osProfile"]["linuxConfiguration"]
    assert "adminPassword" not in props["osProfile"] and linux["disablePasswordAuthentication"] is True
    assert linux["ssh"]["publicKeys"][0]["keyData"].startswith("ssh-rsa ")
    settle(provider, provider.generalize(build, env, log), log)
    captured, _ = settle(provider, provider.capture(build, env, log), log)
    assert captured.image["managed_image_id"] is None and captured.image["trusted_launch"] is True
    sig, _ = settle(provider, provider.distribute(build, captured, 0, "westus", log), log)
    assert sig.status == "succeeded", sig
    version = arm.resources[sig.artifact_id.lower()]
    assert version["properties"]["storageProfile"]["source"] == {"virtualMachineId": env.handle["vm_id"]}
    assert provider.cleanup(build, keep=False, log=log).errors == []
    assert arm.problems == []


def test_a_trusted_launch_target_definition_makes_the_build_vm_trusted_launch(provider, arm):
    """Before the fix the VM followed the (Standard, Gen2) platform source: its managed image went to a
    TrustedLaunch definition, which ARM refuses."""
    log = ListLog()
    _trusted_gallery(arm)
    template = linux_template()
    template["properties"]["source"]["sku"] = "server-gen2"
    template["properties"]["distribute"] = [template["properties"]["distribute"][0]]
    build = build_input(template)
    env, _ = settle(provider, provider.create_build_env(build, provider.prepare(build, log), log), log)
    assert arm.vm_bodies[0]["properties"]["securityProfile"]["securityType"] == "TrustedLaunch"
    settle(provider, provider.generalize(build, env, log), log)
    captured, _ = settle(provider, provider.capture(build, env, log), log)
    sig, _ = settle(provider, provider.distribute(build, captured, 0, "westus", log), log)
    assert sig.status == "succeeded", sig
    assert arm.problems == []


def test_the_fake_refuses_sources_of_the_wrong_security_type(provider, arm):
    log = ListLog()
    template = linux_template()
    template["properties"]["source"]["sku"] = "server-gen2"
    build = build_input(template)
    env, _ = settle(provider, provider.create_build_env(build, provider.prepare(build, log), log), log)
    settle(provider, provider.generalize(build, env, log), log)
    captured, _ = settle(provider, provider.capture(build, env, log), log)
    _trusted_gallery(arm)  # what the pre-fix provider did: a Standard build into a TrustedLaunch definition
    sig, _ = settle(provider, provider.distribute(build, captured, 0, "westus", log), log)
    assert sig.status == "failed" and "security type Standard" in sig.error.message, sig
    _trusted_gallery(arm, "TrustedLaunchSupported")  # a Standard managed image is fine there
    sig, _ = settle(provider, provider.distribute(build, captured, 0, "westus", log), log)
    assert sig.status == "succeeded", sig


def test_conflicting_security_types_fail_before_any_resource_exists(provider, arm):
    log = ListLog()
    _trusted_gallery(arm)
    template = linux_template()
    template["properties"]["source"]["sku"] = "server-gen2"  # TrustedLaunch gallery + a managed image
    build = build_input(template)
    env = provider.create_build_env(build, provider.prepare(build, log), log)
    assert env.handle["status"] == "failed" and env.handle["error"]["code"] == "SecurityTypeConflict"
    assert "properties.distribute[1] (a managed image)" in env.handle["error"]["message"]
    assert not [r for r in arm.requests if r[0] != "GET"]
    template["properties"]["source"]["sku"] = "server"  # Gen1 cannot be Trusted Launch at all
    template["properties"]["distribute"] = [template["properties"]["distribute"][0]]
    env = provider.create_build_env(build_input(template), provider.prepare(build_input(template), log), log)
    assert env.handle["error"]["code"] == "TrustedLaunchNeedsGen2"


def test_standard_security_is_explicit_for_gen1_and_gen2(provider, arm):
    log = ListLog()
    build = build_input(linux_template())
    settle(provider, provider.create_build_env(build, provider.prepare(build, log), log), log)
    assert arm.vm_bodies[0]["properties"]["securityProfile"] == {"securityType": "Standard"}


def test_private_blob_scripts_are_read_with_identities_not_sent_elsewhere(provider, arm):
    log = ListLog()
    blob = "https://scripts.blob.core.windows.net/private/setup.sh"
    arm.files[blob] = b"echo private\n"
    template = linux_template(vmProfile={"userAssignedIdentities": [IDENTITY]})
    template["properties"]["customize"][1]["scriptUri"] = blob
    build = build_input(template)
    prepared = provider.prepare(build, log)
    assert prepared.status == "succeeded", prepared
    got = [r for r in arm.requests if r[0] == "GET" and r[1] == "/private/setup.sh"]
    assert got, "the blob was not read through the storage client"
    env, _ = settle(provider, provider.create_build_env(build, prepared, log), log)
    settle(provider, provider.customize(build, env, 1, log), log)
    script = arm.scripts["ib-customize-1"]
    assert f"IB_MSI={IDENTITY}" in script and "169.254.169.254/metadata/identity/oauth2/token" in script
    assert arm.problems == []  # includes: no credential sent to example.com


def test_credential_choice_from_app_settings():
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    from imagebuilder.providers.azure.provider import AzureProvider

    build = build_input(linux_template())
    template_mode = AzureProvider(environ={"IMAGEBUILDER_AZURE_CREDENTIAL": "template"})
    assert isinstance(template_mode._credential_for(build), ManagedIdentityCredential)
    app_identity = AzureProvider(
        environ={"IMAGEBUILDER_AZURE_CLIENT_ID": "11111111-1111-1111-1111-111111111111"}
    )
    assert isinstance(app_identity._credential_for(build), ManagedIdentityCredential)
    assert isinstance(AzureProvider(environ={})._credential_for(build), DefaultAzureCredential)
