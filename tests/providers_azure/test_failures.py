"""Throttling, transient and permanent ARM failures, and the cleanup that follows each."""

from __future__ import annotations

import json

import pytest

from imagebuilder.pipeline.messages import BuildEnv, Pending, StepResult
from imagebuilder.providers.base import TransientProviderError
from tests.providers_azure.conftest import ListLog, build_input, linux_template, own_resources, settle
from tests.providers_azure.fake_arm import Fault


def _env(provider, build, log):
    prepared = provider.prepare(build, log)
    env, _ = settle(provider, provider.create_build_env(build, prepared, log), log)
    return prepared, env


def _clean(provider, arm, build, log):
    report = provider.cleanup(build, keep=False, log=log)
    assert report.errors == []
    outputs = [r for r in own_resources(arm) if "/resourcegroups/it_" not in r.lower()]
    assert own_resources(arm) == outputs  # only distributed artifacts outlive the run
    assert arm.problems == []
    return report


def test_429_on_a_write_becomes_pending_with_retry_after_then_resumes(provider, arm):
    log = ListLog()
    build = build_input(linux_template())
    arm.faults.append(
        Fault("PUT", r"/virtualmachines/", 429, "TooManyRequests", "throttled", {"Retry-After": "37"})
    )
    prepared = provider.prepare(build, log)
    result = provider.create_build_env(build, prepared, log)
    seen = []
    while isinstance(result, Pending):
        seen.append(result.retry_after_seconds)
        result = provider.poll(result, log)
    assert 37 in seen
    assert isinstance(result, BuildEnv) and result.handle["status"] == "ready"
    assert "throttled" in log.text
    _clean(provider, arm, build, log)


def test_429_while_polling_keeps_the_operation(provider, arm):
    log = ListLog()
    build = build_input(linux_template())
    arm.faults.append(
        Fault("GET", r"/operations/", 429, "TooManyRequests", headers={"x-ms-retry-after-ms": "20500"})
    )
    prepared = provider.prepare(build, log)
    first = provider.create_build_env(build, prepared, log)
    assert isinstance(first, Pending) and first.operation["op"]
    second = provider.poll(first, log)
    assert isinstance(second, Pending) and second.retry_after_seconds == 21
    assert second.operation["op"] == first.operation["op"]
    env, _ = settle(provider, second, log)
    assert env.handle["status"] == "ready"
    _clean(provider, arm, build, log)


def test_server_error_is_transient_and_a_retry_finds_the_first_attempts_work(provider, arm):
    log = ListLog()
    build = build_input(linux_template())
    prepared = provider.prepare(build, log)
    arm.faults.append(Fault("GET", r"/networkinterfaces/", 503, "ServiceUnavailable"))
    with pytest.raises(TransientProviderError, match="ServiceUnavailable"):
        settle(provider, provider.create_build_env(build, prepared, log), log)
    env, _ = settle(provider, provider.create_build_env(build, prepared, log), log)  # the activity's retry
    assert env.handle["status"] == "ready"
    puts = [p for m, p, _, _ in arm.requests if m == "PUT" and "/networksecuritygroups/" in p.lower()]
    assert len(puts) == 1  # the NSG was not made twice
    _clean(provider, arm, build, log)


def test_connection_errors_are_retried_by_the_pipeline_without_real_sleeps(provider, arm):
    from azure.core.exceptions import ServiceRequestError

    log = ListLog()
    build = build_input(linux_template())
    original = arm.send
    failures = {"left": 2}

    def flaky(request, **kwargs):
        if (
            failures["left"]
            and "virtualmachineimages" not in request.url.lower()
            and "/publishers/" in request.url.lower()
        ):
            failures["left"] -= 1
            raise ServiceRequestError("connection reset")
        return original(request, **kwargs)

    arm.send = flaky
    prepared = provider.prepare(build, log)
    assert prepared.status == "succeeded"
    assert failures["left"] == 0 and arm.slept  # backoff went through transport.sleep, not time.sleep


def test_permanent_put_failure_is_returned_with_arm_code_and_cleanup_removes_the_rest(provider, arm):
    log = ListLog()
    build = build_input(linux_template())
    arm.faults.append(
        Fault(
            "PUT",
            r"/virtualmachines/",
            409,
            "SkuNotAvailable",
            "The requested size Standard_D1_v2 is not available",
        )
    )
    _prepared, env = _env(provider, build, log)
    assert env.handle["status"] == "failed"
    assert env.handle["error"]["code"] == "SkuNotAvailable"
    assert "not available" in env.handle["error"]["message"]
    # later steps refuse politely instead of touching a VM that does not exist
    step = provider.customize(build, env, 0, log)
    assert isinstance(step, StepResult) and step.status == "failed" and step.error.code == "SkuNotAvailable"
    assert own_resources(arm)  # NSG, VNet, NIC, staging group exist
    _clean(provider, arm, build, log)


def test_async_operation_failure_is_reported_with_its_code(provider, arm):
    log = ListLog()
    build = build_input(linux_template())
    arm.op_failures.append(
        (
            r"/virtualmachines/[^/]+$",
            "OSProvisioningTimedOut",
            "OS Provisioning did not finish in the allotted time",
        )
    )
    _prepared, env = _env(provider, build, log)
    assert env.handle["status"] == "failed"
    assert env.handle["error"]["code"] == "OSProvisioningTimedOut"
    assert env.handle["error"]["step"] == "create_build_env"
    _clean(provider, arm, build, log)


def test_authorization_failure_names_the_roles(provider, arm):
    log = ListLog()
    build = build_input(linux_template())
    arm.faults.append(
        Fault(
            "PUT",
            r"/resourcegroups/it_",
            403,
            "AuthorizationFailed",
            "does not have authorization to perform action",
        )
    )
    _prepared, env = _env(provider, build, log)
    assert env.handle["error"]["code"] == "AuthorizationFailed"
    assert "infra/README.md" in env.handle["error"]["message"]


def test_customizer_failure_returns_exit_code_and_log_tail(provider, arm):
    log = ListLog()
    build = build_input(linux_template())

    def guest(vm, name, script):
        if name == "ib-customize-1":
            return 3, "step one\nstep two\n", "E: unable to locate package\n"
        return 0, "ok\n", ""

    arm.guest = guest
    _, env = _env(provider, build, log)
    step, _ = settle(provider, provider.customize(build, env, 1, log), log)
    assert step.status == "failed" and step.exit_code == 3
    assert step.error.code == "CustomizerFailed" and step.error.step == "customize[1] (script)"
    assert step.error.log_tail[-1] == "E: unable to locate package"
    assert step.error.log_uri == ListLog.uri
    assert "E: unable to locate package" in log.text
    _clean(provider, arm, build, log)


def test_checksum_mismatch_fails_prepare_before_any_resource_exists(provider, arm):
    log = ListLog()
    template = linux_template()
    template["properties"]["customize"][1]["sha256Checksum"] = "0" * 64
    prepared = provider.prepare(build_input(template), log)
    assert prepared.status == "failed" and prepared.error.code == "ChecksumMismatch"
    assert "properties.customize[1].sha256Checksum" in prepared.error.message
    assert [m for m, *_ in arm.requests if m != "GET"] == []


def test_cleanup_is_idempotent_ordered_and_keeps_on_abort(provider, arm):
    log = ListLog()
    build = build_input(linux_template())
    _env(provider, build, log)
    kept = provider.cleanup(build, keep=True, log=log)
    assert kept.kept and kept.removed == [] and own_resources(arm)
    first = _clean(provider, arm, build, log)
    kinds = [
        rid.split("/providers/")[-1].split("/")[1] if "/providers/" in rid else "resourceGroups"
        for rid in first.removed
    ]
    assert kinds[0] == "virtualMachines" and kinds[-1] == "resourceGroups"
    assert kinds.index("virtualNetworks") < kinds.index("networkSecurityGroups")
    again = provider.cleanup(build, keep=False, log=log)
    assert again.removed == [] and again.errors == []


def test_cleanup_past_its_budget_raises_transient_and_finishes_on_retry(arm, clock):
    from tests.providers_azure.conftest import RecordingProvider
    from tests.providers_azure.fake_arm import FakeCredential

    provider = RecordingProvider(
        credential=FakeCredential(),
        transport=arm,
        sleep=clock.sleep,
        clock=clock,
        cleanup_budget_seconds=25,
        min_write_interval=0,
    )
    log = ListLog()
    build = build_input(linux_template())
    _env(provider, build, log)
    arm.op_polls = 5  # each delete now takes five status reads of 10 s
    with pytest.raises(TransientProviderError, match="still running"):
        provider.cleanup(build, keep=False, log=log)
    for _ in range(10):
        try:
            report = provider.cleanup(build, keep=False, log=log)
            break
        except TransientProviderError:
            continue
    assert report.errors == [] and own_resources(arm) == []


def test_given_staging_group_must_be_empty_and_in_region_and_is_kept(provider, arm):
    from tests.providers_azure.fake_arm import SUB

    log = ListLog()
    rg_id = f"/subscriptions/{SUB}/resourceGroups/my-staging"
    arm.resources[rg_id.lower()] = {
        "id": rg_id,
        "name": "my-staging",
        "type": "Microsoft.Resources/resourceGroups",
        "location": "westus",
        "tags": {},
        "properties": {"provisioningState": "Succeeded"},
    }
    other = f"{rg_id}/providers/Microsoft.Storage/storageAccounts/someone"
    arm.resources[other.lower()] = {
        "id": other,
        "name": "someone",
        "type": "Microsoft.Storage/storageAccounts",
        "location": "westus",
        "tags": {},
        "properties": {},
    }
    build = build_input(linux_template(stagingResourceGroup=rg_id))
    _, env = _env(provider, build, log)
    assert env.handle["status"] == "failed" and env.handle["error"]["code"] == "InvalidStagingResourceGroup"
    assert "not empty" in env.handle["error"]["message"]
    del arm.resources[other.lower()]
    _, env = _env(provider, build, log)
    assert env.handle["status"] == "ready" and env.handle["resource_group"] == "my-staging"
    report = provider.cleanup(build, keep=False, log=log)
    assert report.errors == [] and own_resources(arm) == []
    assert rg_id.lower() in arm.resources  # the group itself stays

    arm.resources[rg_id.lower()]["location"] = "eastus"
    _, env = _env(provider, build_input(linux_template(stagingResourceGroup=rg_id), run="run-2"), log)
    assert (
        env.handle["error"]["code"] == "InvalidStagingResourceGroup"
        and "eastus" in env.handle["error"]["message"]
    )


def test_replication_failure_is_per_region(provider, arm):
    log = ListLog()
    build = build_input(linux_template())
    _, env = _env(provider, build, log)
    for step in (provider.generalize, provider.capture):
        settle(provider, step(build, env, log), log)
    captured, _ = settle(provider, provider.capture(build, env, log), log)
    arm.replication_failure = "eastus"
    west, _ = settle(provider, provider.distribute(build, captured, 0, "West US", log), log)
    east, _ = settle(provider, provider.distribute(build, captured, 0, "eastus", log), log)
    assert west.status == "succeeded"
    assert (
        east.status == "failed" and east.error.code == "ReplicationFailed" and "quota" in east.error.message
    )
    bad, _ = settle(provider, provider.distribute(build, captured, 0, "northeurope", log), log)
    assert bad.status == "failed" and bad.error.code == "InvalidRegion"
    _clean(provider, arm, build, log)


def test_write_pacing_spaces_arm_writes(provider, arm, clock):
    log = ListLog()
    build = build_input(linux_template())
    _env(provider, build, log)
    assert provider.pacer.waited, "consecutive writes were not paced"
    assert all(0 < w <= 0.5 for w in provider.pacer.waited)


def test_validation_failure_names_the_validator(provider, arm):
    log = ListLog()
    build = build_input(linux_template())
    arm.guest = lambda vm, name, script: (
        (1, "", "test: /etc/motd: missing\n") if name == "ib-validate-0" else (0, "", "")
    )
    _, env = _env(provider, build, log)
    result, _ = settle(provider, provider.validate(build, env, log), log)
    assert result.status == "failed" and result.error.code == "ValidationFailed"
    assert result.step == "validate.inVMValidations[0] (check)" and result.exit_code == 1
    _clean(provider, arm, build, log)


def test_no_validations_is_skipped_and_get_provider_builds_without_network(provider, arm):
    from imagebuilder.providers.registry import get_provider

    log = ListLog()
    template = linux_template()
    template["properties"].pop("validate")
    build = build_input(template)
    _, env = _env(provider, build, log)
    assert provider.validate(build, env, log).status == "skipped"
    assert get_provider("azure", environ={"IMAGEBUILDER_AZURE_POLL_SECONDS": "30"}).poll_interval == 30


def test_source_image_in_another_region_is_refused_before_building(provider, arm):
    from tests.providers_azure.conftest import PREFIX

    image = f"{PREFIX}/rg1/providers/Microsoft.Compute/images/elsewhere"
    arm.resources[image.lower()] = {
        "id": image,
        "name": "elsewhere",
        "type": "Microsoft.Compute/images",
        "location": "eastus",
        "tags": {},
        "properties": {"storageProfile": {"osDisk": {"osType": "Linux"}}},
    }
    template = linux_template()
    template["properties"]["source"] = {"type": "ManagedImage", "imageId": image}
    prepared = provider.prepare(build_input(template), ListLog())
    assert prepared.status == "failed" and prepared.error.code == "SourceImageLocationMismatch"
    missing = linux_template()
    missing["properties"]["source"] = {"type": "ManagedImage", "imageId": image + "-gone"}
    assert provider.prepare(build_input(missing), ListLog()).error.code == "SourceImageNotFound"
    bad = linux_template()
    bad["properties"]["source"] = {"type": "ManagedImage", "imageId": "not-an-id"}
    err = provider.prepare(build_input(bad), ListLog()).error
    assert err.code == "InvalidResourceId" and "properties.source.imageId" in err.message


def test_a_pending_resumes_in_a_fresh_provider_instance(provider, arm, clock):
    """Each poll may run in another worker process: nothing may live only in the provider's memory."""
    from tests.providers_azure.conftest import RecordingProvider
    from tests.providers_azure.fake_arm import FakeCredential

    log = ListLog()
    build = build_input(linux_template())
    prepared = provider.prepare(build, log)
    result = provider.create_build_env(build, prepared, log)
    while isinstance(result, Pending):
        fresh = RecordingProvider(
            credential=FakeCredential(), transport=arm, sleep=clock.sleep, clock=clock, environ={}
        )
        wire = result.model_dump_json()
        assert "managedResourceTags" not in wire  # no template: the poll activity supplies the build
        result = fresh.poll(Pending.model_validate_json(wire), log, build)
    assert isinstance(result, BuildEnv) and result.handle["status"] == "ready"
    _clean(provider, arm, build, log)


def test_downloads_follow_redirects_and_missing_files_fail_prepare(provider, arm):
    arm.redirects["https://example.com/setup.sh"] = "https://raw.example.org/setup.sh"
    arm.files["https://raw.example.org/setup.sh"] = arm.files.pop("https://example.com/setup.sh")
    prepared = provider.prepare(build_input(linux_template()), ListLog())
    assert prepared.status == "succeeded"
    del arm.files["https://raw.example.org/setup.sh"]
    failed = provider.prepare(build_input(linux_template()), ListLog())
    assert (
        failed.status == "failed"
        and failed.error.code == "ScriptDownloadFailed"
        and "404" in failed.error.message
    )


def test_build_vm_allocation_failure_is_retried_with_a_new_vm(provider, arm):
    log = ListLog()
    build = build_input(linux_template())
    arm.op_failures.append(
        (r"/virtualmachines/[^/]+$", "AllocationFailed", "Allocation failed. Please try another size.")
    )
    _, env = _env(provider, build, log)
    assert env.handle["status"] == "ready", env
    assert len(arm.vm_bodies) == 2 and "trying again (1/2)" in log.text
    nic_puts = [p for m, p, _, _ in arm.requests if m == "PUT" and "/networkinterfaces/" in p.lower()]
    assert len(nic_puts) == 2  # the NIC went with the failed VM and was made again
    for _ in range(3):
        arm.op_failures.append((r"/virtualmachines/[^/]+$", "AllocationFailed", "still no capacity"))
    _, env = _env(provider, build_input(linux_template(), run="run-2"), log)
    assert env.handle["status"] == "failed" and env.handle["error"]["code"] == "AllocationFailed"
    _clean(provider, arm, build, log)
    _clean(provider, arm, build_input(linux_template(), run="run-2"), log)


def test_managed_image_in_another_region_goes_through_a_copied_snapshot(provider, arm):
    from tests.providers_azure.conftest import PREFIX

    log = ListLog()
    template = linux_template()
    target = f"{PREFIX}/myResourceGroup/providers/Microsoft.Compute/images/out-east"
    template["properties"]["distribute"][1] = {
        "type": "ManagedImage",
        "runOutputName": "east",
        "imageId": target,
        "location": "eastus",
    }
    build = build_input(template)
    _, env = _env(provider, build, log)
    settle(provider, provider.generalize(build, env, log), log)
    captured, _ = settle(provider, provider.capture(build, env, log), log)
    result, _ = settle(provider, provider.distribute(build, captured, 1, "eastus", log), log)
    assert result.status == "succeeded" and result.artifact_id == target, result
    image = arm.resources[target.lower()]
    assert image["location"] == "eastus"
    snapshot = image["properties"]["storageProfile"]["osDisk"]["snapshot"]["id"]
    assert snapshot.endswith("-snap-eastus") and "copying the OS disk snapshot to eastus" in log.text
    report = _clean(provider, arm, build, log)
    assert [r for r in report.removed if "/snapshots/" in r]  # both snapshots were transient


def test_cleanup_reports_a_refused_delete_and_removes_the_rest(provider, arm):
    log = ListLog()
    build = build_input(linux_template())
    _env(provider, build, log)
    arm.faults.append(
        Fault(
            "DELETE", r"/networksecuritygroups/", 403, "AuthorizationFailed", "no delete permission", times=1
        )
    )
    report = provider.cleanup(build, keep=False, log=log)
    assert (
        len(report.errors) == 1
        and "AuthorizationFailed" in report.errors[0]
        and "/networkSecurityGroups/" in report.errors[0]
    )
    kinds = {
        r["type"]
        for r in arm.resources.values()
        if (r.get("tags") or {}).get("imagebuilder-run") == "run-0001"
    }
    assert kinds == {
        "Microsoft.Network/networkSecurityGroups",
        "Microsoft.Resources/resourceGroups",
    }  # the rest is gone
    _clean(provider, arm, build, log)  # a later attempt finishes the job


def test_handles_are_typed_models_on_a_plain_json_wire(provider, arm):
    """BuildEnv.handle and CaptureResult.image cross the durable boundary as JSON; the provider reads them
    through BuildHandle / CapturedImage, and a handle missing what a step needs fails validation loudly."""
    import pydantic

    from imagebuilder.providers.azure.handles import BuildHandle, CapturedImage

    log = ListLog()
    build = build_input(linux_template())
    env, _ = settle(provider, provider.create_build_env(build, provider.prepare(build, log), log), log)
    handle = BuildHandle.of(json.loads(env.model_dump_json()))
    assert handle.vm.endswith("-vm") and handle.source is not None and handle.security_type == "Standard"
    assert set(env.handle) <= set(BuildHandle.model_fields)
    with pytest.raises(pydantic.ValidationError):
        CapturedImage.of({"status": "succeeded", "image": {"vm_id": "x"}})
    _clean(provider, arm, build, log)


def test_an_unreadable_stored_template_fails_prepare_and_create_naming_the_field(provider, arm):
    """The provider reads the template as the frozen model: a stored template that cannot be read (a
    customizer type the schema does not know) is a failed result naming the field, nothing is made, and
    cleanup still works."""
    from imagebuilder.pipeline.messages import TemplateInput, TemplateRef
    from tests.providers_azure.fake_arm import SUB

    log = ListLog()
    template = linux_template()
    template["properties"]["customize"] = [{"type": "Ansible", "playbook": "site.yml"}]
    build = build_input(template)
    prepared = provider.prepare(build, log)
    assert prepared.status == "failed" and prepared.error.code == "BadCustomizerType"
    assert "properties.customize[0].type" in prepared.error.message and prepared.error.step == "prepare"
    ref = TemplateRef(subscription_id=SUB, resource_group="rg", template_name="unreadable")
    made = provider.create_template(TemplateInput(ref=ref, template=template), ListLog())
    assert made.status == "failed" and "properties.customize[0].type" in made.error.message
    assert not [r for r in arm.requests if r[0] == "PUT"]
    assert provider.cleanup(build, keep=False, log=log).errors == []
