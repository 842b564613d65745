"""The one list of files a build fetches (`pipeline.artifacts.build_artifacts`): customize,
inVMValidations and optimize.workload, the same from the template model, the local provider's staging
list and the raw JSON (URI schemes the ARM model refuses included, for the local provider)."""

from __future__ import annotations

from imagebuilder.pipeline.artifacts import build_artifacts
from imagebuilder.providers.local import artifacts as local_artifacts
from imagebuilder.template import ImageTemplate, parse_stored_template

SHA = "ab" * 32
IDENTITY = "/subscriptions/s/resourceGroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i"


def _template(script: str = "https://h.example/a.sh") -> dict:
    return {
        "location": "westus",
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {IDENTITY: {}}},
        "properties": {
            "source": {
                "type": "PlatformImage",
                "publisher": "a",
                "offer": "b",
                "sku": "c",
                "version": "latest",
            },
            "customize": [
                {"type": "Shell", "name": "inline", "inline": ["true"]},
                {"type": "Shell", "name": "s", "scriptUri": script, "sha256Checksum": SHA},
                {"type": "File", "name": "f", "sourceUri": "https://h.example/f", "destination": "/f"},
            ],
            "validate": {
                "inVMValidations": [{"type": "Shell", "name": "v", "scriptUri": "https://h.example/v.sh"}]
            },
            "optimize": {"workload": {"scriptUri": "https://h.example/w.sh", "sha256Checksum": SHA}},
            "distribute": [{"type": "VHD", "runOutputName": "v"}],
        },
    }


def test_every_consumer_sees_the_same_list_including_the_optimize_workload() -> None:
    template = _template()
    refs = build_artifacts(template)
    assert [(r.target, r.uri, r.sha256) for r in refs] == [
        ("properties.customize[1].scriptUri", "https://h.example/a.sh", SHA),
        ("properties.customize[2].sourceUri", "https://h.example/f", None),
        ("properties.validate.inVMValidations[0].scriptUri", "https://h.example/v.sh", None),
        ("properties.optimize.workload.scriptUri", "https://h.example/w.sh", SHA),
    ]
    assert ImageTemplate.model_validate(template).properties.artifacts() == refs
    assert build_artifacts(parse_stored_template(template)) == refs  # the model providers pass
    local = local_artifacts.collect(parse_stored_template(template))
    assert [(a.field, a.uri, a.sha256 or None) for a in local] == [(r.target, r.uri, r.sha256) for r in refs]


def test_file_uris_the_local_provider_takes_are_listed_too() -> None:
    refs = build_artifacts(_template("file:///srv/scripts/a.sh"))
    assert refs[0].uri == "file:///srv/scripts/a.sh"
    assert build_artifacts(parse_stored_template(_template("file:///srv/scripts/a.sh"))) == refs
