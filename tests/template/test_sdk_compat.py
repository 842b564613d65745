"""Cross-check with the official client: bodies azure-mgmt-imagebuilder sends parse, and what we return
deserializes into its models with every value where the SDK expects it."""

from __future__ import annotations

import json
from typing import Any

from azure.mgmt.imagebuilder import models as sdk
from azure.mgmt.imagebuilder._utils.model_base import SdkJSONEncoder

from imagebuilder.template import apply_update, parse_template, parse_template_update, parse_trigger
from tests.template.conftest import ACI_SUBNET, FULL_TEMPLATE, GALLERY_IMAGE, IDENTITY, SHA, SUBNET


def _wire(model: Any) -> Any:
    """The request body exactly as the SDK's operations serialize it."""
    return json.loads(json.dumps(model, cls=SdkJSONEncoder, exclude_readonly=True))


def _sdk_template() -> sdk.ImageTemplate:
    return sdk.ImageTemplate(
        location="westus2",
        tags={"a": "b"},
        identity=sdk.ImageTemplateIdentity(
            type="UserAssigned", user_assigned_identities={IDENTITY: sdk.UserAssignedIdentity()}
        ),
        properties=sdk.ImageTemplateProperties(
            source=sdk.ImageTemplateSharedImageVersionSource(
                image_version_id=GALLERY_IMAGE + "/versions/latest"
            ),
            customize=[
                sdk.ImageTemplateShellCustomizer(
                    name="s", script_uri="https://e.com/s.sh", sha256_checksum=SHA
                ),
                sdk.ImageTemplatePowerShellCustomizer(
                    name="p", inline=["a"], run_elevated=True, run_as_system=True, valid_exit_codes=[0, 1]
                ),
                sdk.ImageTemplateRestartCustomizer(
                    restart_command="shutdown /r", restart_check_command="", restart_timeout="5m"
                ),
                sdk.ImageTemplateWindowsUpdateCustomizer(
                    search_criteria="IsInstalled=0", filters=["include:$true"], update_limit=5
                ),
                sdk.ImageTemplateFileCustomizer(
                    source_uri="https://e.com/f", destination="/tmp/f", sha256_checksum=""
                ),
            ],
            optimize=sdk.ImageTemplatePropertiesOptimize(
                vm_boot=sdk.ImageTemplatePropertiesOptimizeVmBoot(state="Enabled"),
                workload=sdk.ImageTemplatePropertiesOptimizeWorkload(
                    state="Enabled", script_uri="https://e.com/w.sh"
                ),
            ),
            validate=sdk.ImageTemplatePropertiesValidate(
                continue_distribute_on_failure=True,
                source_validation_only=False,
                in_vm_validations=[
                    sdk.ImageTemplateShellValidator(name="v", inline=["true"]),
                    sdk.ImageTemplatePowerShellValidator(script_uri="https://e.com/v.ps1", run_elevated=True),
                    sdk.ImageTemplateFileValidator(source_uri="https://e.com/v", destination="C:\\v"),
                ],
            ),
            distribute=[
                sdk.ImageTemplateManagedImageDistributor(
                    run_output_name="m",
                    image_id="/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/images/i",
                    location="westus2",
                    artifact_tags={"x": "y"},
                ),
                sdk.ImageTemplateSharedImageDistributor(
                    run_output_name="g",
                    gallery_image_id=GALLERY_IMAGE,
                    target_regions=[
                        sdk.TargetRegion(name="westus2", replica_count=1, storage_account_type="Premium_LRS")
                    ],
                    versioning=sdk.DistributeVersionerSource(),
                    exclude_from_latest=True,
                    replication_mode="Shallow",
                ),
                sdk.ImageTemplateVhdDistributor(
                    run_output_name="v", uri="https://acct.blob.core.windows.net/vhds/x.vhd"
                ),
            ],
            error_handling=sdk.ImageTemplatePropertiesErrorHandling(
                on_customizer_error="cleanup", on_validation_error="abort"
            ),
            build_timeout_in_minutes=0,
            vm_profile=sdk.ImageTemplateVmProfile(
                vm_size="",
                os_disk_size_gb=0,
                user_assigned_identities=[IDENTITY],
                vnet_config=sdk.VirtualNetworkConfig(
                    subnet_id=SUBNET, container_instance_subnet_id=ACI_SUBNET
                ),
            ),
            additional_data_disks=[sdk.DataDisk(size_gb=10)],
            staging_resource_group="/subscriptions/s/resourceGroups/staging",
            auto_run=sdk.ImageTemplateAutoRun(state="Enabled"),
            managed_resource_tags={"k": "v"},
        ),
    )


def test_sdk_request_body_parses_and_round_trips() -> None:
    body = _wire(_sdk_template())
    template = parse_template(body, api_version="2025-10-01")
    assert template.to_arm() == body


def test_our_json_reads_back_into_the_sdk_models() -> None:
    arm = parse_template(FULL_TEMPLATE).to_arm()
    model = sdk.ImageTemplate(arm)
    props = model.properties
    assert isinstance(props.source, sdk.ImageTemplatePlatformImageSource) and props.source.version == "latest"
    assert props.customize[0].script_uri == "https://example.com/setup.sh"
    assert props.customize[3].run_as_system is True and props.customize[3].valid_exit_codes == [0, 3010]
    assert props.validate.in_vm_validations[1].destination == "/tmp/check.sh"
    gallery = props.distribute[1]
    assert gallery.target_regions[0].replica_count == 2 and gallery.versioning.major == 1
    assert (
        props.vm_profile.os_disk_size_gb == 64
        and props.vm_profile.vnet_config.proxy_vm_size == "Standard_A1_v2"
    )
    assert props.additional_data_disks[0].size_gb == 32
    assert props.build_timeout_in_minutes == 90
    assert _wire(model) == arm  # nothing we emit is unknown to the SDK


def test_sdk_update_body() -> None:
    update = sdk.ImageTemplateUpdateParameters(
        tags={"new": "tag"},
        identity=sdk.ImageTemplateIdentity(type="None"),
        properties=sdk.ImageTemplateUpdateParametersProperties(
            vm_profile=sdk.ImageTemplateVmProfile(vm_size="Standard_D4s_v3"),
            distribute=[sdk.ImageTemplateVhdDistributor(run_output_name="vhd2")],
        ),
    )
    parsed = parse_template_update(_wire(update), api_version="2025-10-01")
    after = apply_update(parse_template(FULL_TEMPLATE), parsed).to_arm()
    assert after["tags"] == {"new": "tag"} and after["identity"] == {"type": "None"}
    assert after["properties"]["vmProfile"] == {"vmSize": "Standard_D4s_v3"}
    assert after["properties"]["distribute"] == [{"type": "VHD", "runOutputName": "vhd2"}]


def test_sdk_trigger_body() -> None:
    body = _wire(sdk.Trigger(properties=sdk.SourceImageTriggerProperties()))
    assert parse_trigger(body, api_version="2025-10-01").to_arm() == {"properties": {"kind": "SourceImage"}}
