"""Service behaviours the strict fake models, each with the request the provider sent before its fix.

Agent-killing scripts never finish (WALinuxAgent#3547, #2006, #1792): `waagent -deprovision+user` and
Sysprep stop the agent that runs and reports Run Command, so such a run command never reaches a terminal
state. The provider launches them detached, waits for the VM's own power-off, and gives every run command
a deadline of its own.
"""

from __future__ import annotations

import json
from typing import Any

from imagebuilder.pipeline.messages import Pending
from tests.providers_azure.conftest import ListLog, build_input, linux_template
from tests.providers_azure.fake_arm import default_guest, guest_effect

# What the provider sent as its generalize run command before the fix (kept as the regression case).
PRE_FIX_DEPROVISION = (
    "#!/bin/bash\nset -eu\n"
    "if command -v waagent >/dev/null 2>&1; then WAAGENT=waagent; else WAAGENT=/usr/sbin/waagent; fi\n"
    "$WAAGENT -force -deprovision+user\n"
    "export HISTSIZE=0\nsync\necho deprovisioned\n"
)
PRE_FIX_SYSPREP = (
    "& $env:SystemRoot\\System32\\Sysprep\\Sysprep.exe /oobe /generalize /quiet /quit /mode:vm\n"
    "Write-Output 'sysprep done'\n"
)


def settle_in_time(provider, result: Any, log: ListLog, clock, limit: int = 400) -> tuple[Any, int]:
    """Like conftest.settle, but each Pending's wait passes on the clock (as the durable timer would)."""
    polls = 0
    while isinstance(result, Pending):
        clock.now += result.retry_after_seconds
        result = provider.poll(Pending.model_validate(json.loads(result.model_dump_json())), log)
        polls += 1
        assert polls < limit, "never finished"
    return result, polls


def _ready_env(provider, arm, template: dict[str, Any] | None = None):
    log = ListLog()
    build = build_input(template or linux_template())
    prepared = provider.prepare(build, log)
    env, _ = settle_in_time(provider, provider.create_build_env(build, prepared, log), log, provider._clock)
    return build, env, log


def test_the_fake_never_finishes_a_run_command_that_stops_the_agent():
    assert guest_effect(PRE_FIX_DEPROVISION) == "hang"
    assert guest_effect(PRE_FIX_SYSPREP) == "hang"
    assert guest_effect("echo hello\n") is None
    # waiting on a scheduled task is still waiting (the Windows runElevated path)
    waited = "Register-ScheduledTask x\nStart-ScheduledTask x\ndo { $t = Get-ScheduledTask x } while (1)\n"
    assert guest_effect(waited + "Write-Output hi\n") is None
    assert guest_effect(waited + PRE_FIX_SYSPREP) == "hang"


def test_a_run_command_whose_agent_stops_reporting_fails_at_its_own_deadline(provider, arm, clock):
    template = linux_template(
        customize=[{"type": "Shell", "name": "oops", "inline": ["sudo waagent -force -deprovision+user"]}],
        buildTimeoutInMinutes=60,
    )
    build, env, log = _ready_env(provider, arm, template)
    start = clock.now
    result, _ = settle_in_time(provider, provider.customize(build, env, 0, log), log, clock)
    assert arm.effects["ib-customize-0"] == "hang"
    assert result.status == "failed" and result.error.code == "RunCommandNoResponse", result
    assert "guest agent stopped reporting" in result.error.message
    # timeoutInSeconds (the build timeout, 3600 s) plus the 300 s margin, not a wait without end
    assert 3600 + 300 <= clock.now - start <= 3600 + 300 + 2 * provider.poll_interval
    assert arm.problems == []


def test_linux_generalize_against_an_agent_that_stops_reporting_ends_deallocated_and_generalized(
    provider, arm, clock
):
    build, env, log = _ready_env(provider, arm)
    start = clock.now
    result, polls = settle_in_time(provider, provider.generalize(build, env, log), log, clock)
    assert result.status == "succeeded", result
    vm = next(r for r in arm.resources.values() if r["type"] == "Microsoft.Compute/virtualMachines")
    statuses = set(vm["_view"]["statuses"])
    assert {"PowerState/deallocated", "OSState/generalized"} <= statuses
    assert vm["_view"]["agent_down_reads"] > 0  # the agent never came back, and nothing waited for it
    assert clock.now - start < 10 * provider.poll_interval and polls < 10
    assert "waiting for" in log.text and "deallocating" in log.text


def test_a_deprovisioning_that_never_powers_off_fails_with_its_own_deadline(arm, clock):
    from tests.providers_azure.conftest import RecordingProvider
    from tests.providers_azure.fake_arm import FakeCredential

    provider = RecordingProvider(
        credential=FakeCredential(),
        transport=arm,
        sleep=clock.sleep,
        clock=clock,
        environ={"IMAGEBUILDER_AZURE_GENERALIZE_SECONDS": "900"},
    )
    build, env, log = _ready_env(provider, arm)
    first = provider.generalize(build, env, log)
    assert isinstance(first, Pending)
    second = provider.poll(first, log)  # the launch reported: deprovisioning runs detached
    vm = next(r for r in arm.resources.values() if r["type"] == "Microsoft.Compute/virtualMachines")
    vm["_view"]["power_off_in"] = 10**9  # ...and hangs in the guest
    start = clock.now
    result, _ = settle_in_time(provider, second, log, clock)
    assert result.status == "failed" and result.error.code == "DeprovisionTimedOut", result
    assert 900 <= clock.now - start <= 900 + 2 * provider.poll_interval


def _captured(provider, arm, template):
    build, env, log = _ready_env(provider, arm, template)
    clock = provider._clock
    settle_in_time(provider, provider.generalize(build, env, log), log, clock)
    captured, _ = settle_in_time(provider, provider.capture(build, env, log), log, clock)
    return build, captured, log


def test_duplicate_target_regions_are_sent_once(provider, arm, clock):
    template = linux_template()
    target = template["properties"]["distribute"][0]
    target["targetRegions"] = [
        {"name": "West US", "replicaCount": 2},
        {"name": "westus"},  # the same region spelled differently: ARM refuses the pair
        {"name": "East US"},
    ]
    target["replicationRegions"] = ["eastus"]
    build, captured, log = _captured(provider, arm, template)
    result, _ = settle_in_time(provider, provider.distribute(build, captured, 0, "westus", log), log, clock)
    assert result.status == "succeeded", result
    put = next(b for m, p, _, b in arm.requests if m == "PUT" and "/versions/" in p)
    regions = put["properties"]["publishingProfile"]["targetRegions"]
    assert [r["name"] for r in regions] == ["West US", "East US"] and regions[0]["regionalReplicaCount"] == 2


def test_the_fake_refuses_duplicate_regions(provider, arm, clock):
    from imagebuilder.providers.azure import distribute as module

    build, captured, log = _captured(provider, arm, linux_template())
    before = module.target_regions
    try:  # what the provider sent before the fix: every region as given
        module.target_regions = lambda target, home: [
            {"name": "West US", "regionalReplicaCount": 1, "storageAccountType": "Standard_LRS"},
            {"name": "westus", "regionalReplicaCount": 1, "storageAccountType": "Standard_LRS"},
        ]
        result, _ = settle_in_time(
            provider, provider.distribute(build, captured, 0, "westus", log), log, clock
        )
    finally:
        module.target_regions = before
    assert result.status == "failed" and "Duplicate regions" in result.error.message


def test_script_uris_on_the_apps_own_storage_are_refused_except_the_artifacts_container(arm, clock):
    from tests.providers_azure.conftest import RecordingProvider
    from tests.providers_azure.fake_arm import FakeCredential

    provider = RecordingProvider(
        credential=FakeCredential(),
        transport=arm,
        sleep=clock.sleep,
        clock=clock,
        environ={
            "AzureWebJobsStorage__accountName": "stibapp",
            "IMAGEBUILDER_ARTIFACTS_CONTAINER": "image-artifacts",
        },
    )
    secrets = "https://stibapp.blob.core.windows.net/azure-webjobs-secrets/host.json"
    arm.files[secrets] = b'{"masterKey": "not for build VMs"}'
    template = linux_template(customize=[{"type": "Shell", "name": "leak", "scriptUri": secrets}])
    log = ListLog()
    prepared = provider.prepare(build_input(template), log)
    assert prepared.status == "failed" and prepared.error.code == "ScriptUriNotAllowed", prepared
    assert "properties.customize[0].scriptUri" in prepared.error.message
    assert "image-artifacts" in prepared.error.message
    assert not [r for r in arm.requests if "stibapp" in r[1] or "azure-webjobs-secrets" in r[1]]

    allowed = "https://stibapp.blob.core.windows.net/image-artifacts/setup.sh"
    arm.files[allowed] = b"echo ok\n"
    template = linux_template(customize=[{"type": "Shell", "name": "ok", "scriptUri": allowed}])
    prepared = provider.prepare(build_input(template), log)
    assert prepared.status == "succeeded", prepared


def test_a_gallery_in_another_region_gets_a_version_from_a_snapshot_copied_there(provider, arm, clock):
    """The version lives in its definition's region (eastus here) while the build ran in westus; before
    the fix its source was the westus managed image, which ARM refuses."""
    from tests.providers_azure.conftest import GALLERY_IMAGE

    arm.resources[GALLERY_IMAGE.lower()]["location"] = "eastus"
    template = linux_template()
    template["properties"]["distribute"] = [template["properties"]["distribute"][0]]
    build, captured, log = _captured(provider, arm, template)
    result, _ = settle_in_time(provider, provider.distribute(build, captured, 0, "East US", log), log, clock)
    assert result.status == "succeeded", result
    version = arm.resources[result.artifact_id.lower()]
    assert version["location"] == "eastus"
    snapshot_id = version["properties"]["storageProfile"]["osDiskImage"]["source"]["id"]
    assert arm.resources[snapshot_id.lower()]["location"] == "eastus"
    regions = [r["name"] for r in version["properties"]["publishingProfile"]["targetRegions"]]
    assert "West US" in regions and "East US" in regions
    assert provider.cleanup(build, keep=False, log=log).errors == []
    assert not [k for k in arm.resources if "/snapshots/" in k]
    assert arm.problems == []


def test_the_fake_refuses_a_version_source_from_another_region(provider, arm, clock):
    from tests.providers_azure.conftest import GALLERY_IMAGE

    template = linux_template()
    build, captured, log = _captured(provider, arm, template)
    arm.resources[GALLERY_IMAGE.lower()]["location"] = "eastus"
    image = dict(
        captured.image, location="eastus"
    )  # the pre-fix provider: a westus source, an eastus version
    bad = captured.model_copy(update={"image": image})
    result, _ = settle_in_time(provider, provider.distribute(build, bad, 0, "East US", log), log, clock)
    assert result.status == "failed" and "must be in the image version's region" in result.error.message


def _noisy_guest(lines: int):
    def guest(vm, name, script):
        if name == "ib-customize-0":
            body = "".join(
                f"line {i:05d} of the build output, padded to be a little longer\n" for i in range(lines)
            )
            return 0, body, "warning: the last line of stderr\n"
        return default_guest(vm, name, script)

    return guest


def _app_provider(arm, clock):
    from tests.providers_azure.conftest import RecordingProvider
    from tests.providers_azure.fake_arm import FakeCredential

    return RecordingProvider(
        credential=FakeCredential(),
        transport=arm,
        sleep=clock.sleep,
        clock=clock,
        environ={"AzureWebJobsStorage__accountName": "stibapp"},
    )


def test_twenty_kilobytes_of_output_reach_the_log_whole_through_append_blobs(arm, clock):
    provider = _app_provider(arm, clock)
    arm.guest = _noisy_guest(340)  # >20 KB: five times Run Command's 4 KB instance-view tail
    template = linux_template(customize=[{"type": "Shell", "name": "noisy", "inline": ["make"]}])
    build, env, log = _ready_env(provider, arm, template)
    polls_text = []
    result = provider.customize(build, env, 0, log)
    while isinstance(result, Pending):
        polls_text.append(result.model_dump_json())
        clock.now += result.retry_after_seconds
        result = provider.poll(Pending.model_validate_json(polls_text[-1]), log)
    assert result.status == "succeeded", result
    out = arm.resources[next(k for k in arm.resources if k.endswith("/runcommands/ib-customize-0"))]
    assert len(out["_run"]["out"]) > 20_000
    for i in range(340):
        assert f"line {i:05d} of the build output" in log.text, i
    assert log.text.count("line 00100 of") == 1  # each line once
    assert "warning: the last line of stderr" in log.text
    assert arm.sas_issued and all("sig=" in uri for uri in arm.sas_issued)
    for uri in arm.sas_issued:  # the SAS is a secret: never logged, never in durable history
        sig = uri.split("sig=", 1)[1].split("&", 1)[0]
        assert sig not in log.text and not any(sig in text for text in polls_text)
    assert arm.problems == []


def test_without_blobs_the_sliding_tail_is_followed_and_a_gap_is_said(provider, arm, clock):
    """Before the fix the provider logged output[len(seen):], assuming the output only grows: past 4 KB
    the instance view's length stays 4096 and nothing more was logged, the final lines included."""
    arm.guest = _noisy_guest(320)
    arm.chunk = 1000  # less than the window between two polls: the tail can be followed
    template = linux_template(customize=[{"type": "Shell", "name": "noisy", "inline": ["make"]}])
    build, env, log = _ready_env(provider, arm, template)
    result, _ = settle_in_time(provider, provider.customize(build, env, 0, log), log, clock)
    assert result.status == "succeeded"
    assert all(log.text.count(f"line {i:05d} of") == 1 for i in range(320))
    assert "output lost here" not in log.text
    arm.chunk = 9000  # more than the window between two polls
    template = linux_template(customize=[{"type": "Shell", "name": "noisy", "inline": ["make"]}])
    build, env, log = _ready_env(provider, arm, template)
    arm.guest = _noisy_guest(320)
    result, _ = settle_in_time(provider, provider.customize(build, env, 0, log), log, clock)
    assert "output lost here" in log.text and "line 00319 of" in log.text


def test_output_blobs_the_vm_cannot_write_fall_back_to_the_instance_view(arm, clock):
    provider = _app_provider(arm, clock)
    template = linux_template(customize=[{"type": "Shell", "name": "quiet", "inline": ["make"]}])
    build, env, log = _ready_env(provider, arm, template)
    arm._handler_appends = lambda uri, data: None  # the VM reaches no storage account
    arm.guest = lambda vm, name, script: (
        0,
        "IMAGEBUILDER-WU installed=1 remaining=0 reboot=0\nlast line\n",
        "",
    )
    result, _ = settle_in_time(provider, provider.customize(build, env, 0, log), log, clock)
    assert result.status == "succeeded"
    assert "output blobs stayed empty" in log.text and "last line" in log.text


def test_the_fake_authorizes_every_request_with_the_role_polls_included(provider, arm, clock):
    """Before the fix the role lacked Microsoft.Compute/locations/diskOperations/read: the disk RP's
    grant-access poll got 403, which the client takes as a failure (VHD export, cross-region images and
    cleanup broke). The fake answers as ARM does for any action the role does not grant."""
    template = linux_template()
    vhd = template["properties"]["distribute"][2]
    build, captured, log = _captured(provider, arm, template)
    arm.role = arm.role - {"microsoft.compute/locations/diskoperations/read"}  # the pre-fix role
    failed, _ = settle_in_time(provider, provider.distribute(build, captured, 2, "westus", log), log, clock)
    assert failed.status == "failed" and failed.error.code == "AuthorizationFailed", failed
    assert "DiskOperations/read" in failed.error.message
    assert vhd["type"] == "VHD"
