"""The fake's body checks come from the REST spec models of the api-versions the SDKs send
(specs/request-models.json), not from what the provider happens to send."""

from __future__ import annotations

import json
from importlib import metadata

from imagebuilder.providers.azure.clients import ArmFailure, AzureClients
from tests.providers_azure.conftest import PREFIX
from tests.providers_azure.fake_arm import SUB, FakeArm, FakeCredential
from tests.providers_azure.specs.check import body_problems, spec
from tests.providers_azure.specs.generate import generate


def test_the_kept_models_match_the_installed_sdks():
    kept = spec()
    for dist, version in kept["generatedFrom"].items():
        assert metadata.version(dist) == version, (
            f"{dist} changed: run python -m tests.providers_azure.specs.generate"
        )
    assert json.loads(json.dumps(generate())) == kept  # the file is exactly what the generator writes


def test_what_the_checks_find():
    op = "Microsoft.Compute/virtualMachines/runCommands PUT"
    ok = {"location": "westus", "properties": {"source": {"script": "echo"}, "timeoutInSeconds": 60}}
    assert body_problems(op, ok) == ([], [])
    refusals, warnings = body_problems(
        op,
        {
            "properties": {
                "source": {"script": "echo", "scriptUrl": "x"},  # a typo of scriptUri
                "timeoutInSeconds": "60",
                "provisioningState": "Succeeded",
            }
        },
    )
    assert "body.location: required by VirtualMachineRunCommand" in refusals
    assert any("timeoutInSeconds: expected an integer" in r for r in refusals)
    assert (
        "body.properties.source.scriptUrl: not a property of VirtualMachineRunCommandScriptSource" in warnings
    )
    assert any("provisioningState: read-only" in w for w in warnings)
    refusals, _ = body_problems(
        "Microsoft.Compute/virtualMachines PUT",
        {"location": "westus", "properties": {"securityProfile": {"securityType": "TrustedLaunh"}}},
    )
    assert any("'TrustedLaunh' is none of" in r for r in refusals)
    # a large open catalogue (VM sizes) is not checked: the service knows sizes newer than the spec
    assert body_problems(
        "Microsoft.Compute/virtualMachines PUT",
        {"location": "westus", "properties": {"hardwareProfile": {"vmSize": "Standard_D2ds_v6"}}},
    ) == ([], [])


def test_the_fake_refuses_a_body_the_spec_refuses_through_the_sdk_pipeline():
    arm = FakeArm()
    clients = AzureClients(SUB, FakeCredential(), transport=arm)
    versions = clients.compute.gallery_image_versions
    body = {
        "location": "westus",
        "properties": {
            # what the fake used to check by hand: hyperVGeneration belongs to the definition
            "hyperVGeneration": "V2",
            "publishingProfile": {"targetRegions": [{"name": "westus", "regionalReplicaCount": "1"}]},
            "storageProfile": {"source": {"id": f"{PREFIX}/rg/providers/Microsoft.Compute/images/x"}},
        },
    }
    try:
        clients.start(
            "create version",
            lambda p: versions.begin_create_or_update("rg", "g", "i", "1.0.0", body, polling=p),
        )
    except ArmFailure as exc:
        assert exc.code == "InvalidRequestContent" and "regionalReplicaCount" in exc.arm_message
    else:
        raise AssertionError("the fake took a body its spec refuses")
    assert any("hyperVGeneration: not a property of GalleryImageVersionProperties" in p for p in arm.problems)


def test_the_kept_models_agree_with_the_published_spec_excerpt():
    """The SDK-derived models against the newest published runCommand.json in the reference (2025-04-01):
    every property the spec defines is there with the same type and read-only-ness, and the execution
    states the fake reports are the spec's."""
    from pathlib import Path

    from imagebuilder.providers.azure.runcommand import TERMINAL_RUN_STATES

    excerpt = json.loads(
        (Path(__file__).parent / "specs" / "published" / "runCommand-2025-04-01.excerpt.json").read_text()
    )
    kinds = {"string": "string", "integer": "integer", "boolean": "boolean", "array": "array"}
    for name, definition in excerpt["definitions"].items():
        kept = spec()["models"][name]["properties"]
        for prop, schema in definition["properties"].items():
            assert prop in kept, f"{name}.{prop} is in the published spec but not in request-models.json"
            assert kept[prop]["readOnly"] == bool(schema.get("readOnly")), f"{name}.{prop} readOnly"
            if "$ref" in schema:
                assert kept[prop]["type"] in ("model", "any"), f"{name}.{prop}"
            else:
                assert kept[prop]["type"] in (kinds[schema["type"]], "any"), f"{name}.{prop}"
    states = excerpt["definitions"]["VirtualMachineRunCommandInstanceView"]["properties"]["executionState"][
        "enum"
    ]
    assert set(TERMINAL_RUN_STATES) <= set(states)
    assert {"Running"} <= set(states)  # what the fake reports while a script runs
