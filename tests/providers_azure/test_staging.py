"""The per-template staging resource group (providers/azure/staging.py) through the template lifecycle."""

from __future__ import annotations

from imagebuilder.pipeline.messages import TemplateInput, TemplateRef
from tests.providers_azure.conftest import (
    PREFIX,
    RG,
    TEMPLATE,
    ListLog,
    build_input,
    linux_template,
    own_resources,
    settle,
)
from tests.providers_azure.fake_arm import SUB

REF = TemplateRef(subscription_id=SUB, resource_group=RG, template_name=TEMPLATE)


def _groups(arm):
    return {r["name"]: r for r in arm.resources.values() if r["type"] == "Microsoft.Resources/resourceGroups"}


def _run(provider, arm, template, run_id):
    log = ListLog()
    build = build_input(template, run=run_id)
    env, _ = settle(provider, provider.create_build_env(build, provider.prepare(build, log), log), log)
    assert env.handle["status"] == "ready", env
    return build, env, log


def test_default_group_is_made_at_create_used_by_every_run_and_deleted_with_the_template(provider, arm):
    template = linux_template()
    log = ListLog()
    made = provider.create_template(TemplateInput(ref=REF, template=template), log)
    assert made.status == "succeeded", made
    name = made.staging["resource_group"]
    assert name.startswith(f"IT_{RG}_{TEMPLATE}_") and made.staging["created"] is True
    assert made.exact_staging_resource_group == f"{PREFIX}/{name}"
    again = provider.create_template(TemplateInput(ref=REF, template=template), log)
    assert again.staging == made.staging  # a retried create finds the same group
    assert len([r for r in arm.requests if r[0] == "PUT" and r[1].endswith(name)]) == 1

    template["properties"]["exactStagingResourceGroup"] = made.exact_staging_resource_group
    for run_id in ("run-a", "run-b"):
        build, env, _ = _run(provider, arm, template, run_id)
        assert env.handle["resource_group"] == name
        report = provider.cleanup(build, keep=False, log=ListLog())
        assert report.errors == [] and own_resources(arm, run_id) == []
        assert name in _groups(arm)  # the template's group outlives its runs
    assert len([k for k in _groups(arm) if k.startswith("IT_")]) == 1

    gone = provider.delete_template(TemplateInput(ref=REF, template=template, staging=made.staging), log)
    assert gone.errors == [] and gone.removed == [made.exact_staging_resource_group]
    assert name not in _groups(arm) and arm.problems == []


def test_a_given_group_is_adopted_emptied_and_kept(provider, arm):
    given = f"{PREFIX}/my-staging"
    arm.resources[given.lower()] = {
        "id": given,
        "name": "my-staging",
        "type": "Microsoft.Resources/resourceGroups",
        "location": "westus",
        "tags": {"owner": "me"},
        "properties": {"provisioningState": "Succeeded"},
    }
    template = linux_template(stagingResourceGroup=given)
    made = provider.create_template(TemplateInput(ref=REF, template=template), ListLog())
    assert made.status == "succeeded" and made.exact_staging_resource_group == given
    assert made.staging == {"resource_group": "my-staging", "created": False}
    template["properties"]["exactStagingResourceGroup"] = given
    build, _, log = _run(provider, arm, template, "run-kept")
    assert provider.cleanup(build, keep=True, log=log).kept  # errorHandling abort kept the build VM
    assert own_resources(arm, "run-kept")

    report = provider.delete_template(
        TemplateInput(ref=REF, template=template, staging=made.staging), ListLog()
    )
    assert report.errors == [] and report.kept == [given]
    assert own_resources(arm, "run-kept") == []  # emptied of what the template's runs left
    group = _groups(arm)["my-staging"]
    assert group["tags"] == {"owner": "me"}  # given back untagged, not deleted
    assert arm.problems == []


def test_create_refuses_what_aib_refuses(provider, arm):
    busy = f"{PREFIX}/busy"
    arm.resources[busy.lower()] = {
        "id": busy,
        "name": "busy",
        "type": "Microsoft.Resources/resourceGroups",
        "location": "westus",
        "tags": {},
        "properties": {"provisioningState": "Succeeded"},
    }
    vnet = f"{busy}/providers/Microsoft.Network/virtualNetworks/other"
    arm.resources[vnet.lower()] = {"id": vnet, "name": "other", "type": "Microsoft.Network/virtualNetworks"}
    cases = [
        (linux_template(stagingResourceGroup=busy), "BadStagingResourceGroup", "is not empty"),
        (
            linux_template(
                source={
                    "type": "PlatformImage",
                    "publisher": "x",
                    "offer": "y",
                    "sku": "z",
                    "version": "latest",
                }
            ),
            "BadPIRSource",
            "x:y:z",
        ),
        (
            linux_template(
                distribute=[
                    {
                        "type": "SharedImage",
                        "runOutputName": "sig",
                        "galleryImageId": f"{PREFIX}/galleryRG/providers/Microsoft.Compute/galleries/g/images/none",
                        "targetRegions": [{"name": "westus"}],
                    }
                ]
            ),
            "BadSharedImageDistribute",
            "does not exist",
        ),
    ]
    for template, code, text in cases:
        made = provider.create_template(TemplateInput(ref=REF, template=template), ListLog())
        assert made.status == "failed" and made.error.code == code and text in made.error.message, made
    assert not [r for r in arm.requests if r[0] == "PUT"], "nothing is made for a template that fails"
