"""`parse_stored_template`: a template as stored (what providers read at build time) always loads, even when
the rules of the PUT would refuse it today; what cannot be read at all is a `TemplateError` naming the
field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from imagebuilder.template import (
    ShellCustomizer,
    TemplateError,
    VhdDistributor,
    parse_stored_template,
    parse_template,
)

SHA = "not-a-sha256"


def _stored() -> dict[str, Any]:
    """A template resource as the store keeps it: read-only members included, no identity (an old
    api-version), and what today's PUT rules refuse (a file:// URI, a runOutputName with a space, a
    checksum that is not one, a tag name with '/', a build timeout under 6 minutes)."""
    return {
        "id": "/subscriptions/s/resourceGroups/r/providers/Microsoft.VirtualMachineImages/imageTemplates/t",
        "name": "t",
        "type": "Microsoft.VirtualMachineImages/imageTemplates",
        "location": "westus",
        "tags": {"a/b": "x"},
        "properties": {
            "provisioningState": "Succeeded",
            "lastRunStatus": {"runState": "Succeeded"},
            "exactStagingResourceGroup": "/subscriptions/s/resourceGroups/IT_r_t_1",
            "source": {
                "type": "PlatformImage",
                "publisher": "ImageBuilderLocal",
                "offer": "busybox",
                "sku": "stable",
                "version": "latest",
                "exactVersion": "1.0.0",
            },
            "customize": [
                {"type": "Shell", "name": "s", "scriptUri": "file:///srv/a.sh", "sha256Checksum": SHA},
                {"type": "File", "sourceUri": "file:///srv/f", "destination": "relative/path"},
            ],
            "buildTimeoutInMinutes": 3,
            "distribute": [{"type": "VHD", "runOutputName": "my output"}],
        },
    }


def test_a_stored_template_loads_although_todays_put_rules_refuse_it() -> None:
    with pytest.raises(TemplateError):
        parse_template(_stored(), api_version="2025-10-01")  # identity, file://, name, tag, timeout
    template = parse_stored_template(_stored())
    shell = template.properties.customizers[0]
    assert isinstance(shell, ShellCustomizer) and shell.script_uri == "file:///srv/a.sh"
    assert shell.sha256_checksum == SHA  # kept as given when the rule is not checked: the fetch compares
    assert template.properties.build_timeout_in_minutes == 3
    assert isinstance(template.properties.distribute[0], VhdDistributor)
    assert template.properties.distribute[0].run_output_name == "my output"
    assert template.tags == {"a/b": "x"}


def test_a_valid_checksum_is_lowered_as_at_put() -> None:
    stored = _stored()
    stored["properties"]["customize"][0]["sha256Checksum"] = "ab" * 31 + "CD"
    shell = parse_stored_template(stored).properties.customizers[0]
    assert isinstance(shell, ShellCustomizer) and shell.sha256_checksum == "ab" * 31 + "cd"


def test_members_the_model_no_longer_knows_are_dropped_silently() -> None:
    stored = _stored()
    stored["properties"]["retiredMember"] = {"x": 1}
    stored["properties"]["customize"][0]["alsoRetired"] = True
    template = parse_stored_template(stored)
    assert "retiredMember" not in template.properties.to_json()


def test_the_stored_json_is_not_changed_by_the_parse() -> None:
    stored = _stored()
    before = copy.deepcopy(stored)
    parse_stored_template(stored)
    assert stored == before


@pytest.mark.parametrize(
    ("change", "target", "code"),
    [
        (lambda t: t["properties"]["customize"][0].update(type="Ansible"), "properties.customize[0].type",
         "BadCustomizerType"),
        (lambda t: t["properties"]["source"].pop("sku"), "properties.source.sku", "BadPIRSource"),
        (lambda t: t["properties"].update(buildTimeoutInMinutes="60"), "properties.buildTimeoutInMinutes",
         "InvalidRequestContent"),
        (lambda t: t.pop("location"), "location", "LocationRequired"),
    ],
)  # fmt: skip
def test_what_cannot_be_read_names_the_field(change: Any, target: str, code: str) -> None:
    stored = _stored()
    change(stored)
    with pytest.raises(TemplateError) as info:
        parse_stored_template(stored)
    assert info.value.target == target and info.value.code == code
    assert target in info.value.message


def test_not_an_object_is_a_template_error() -> None:
    with pytest.raises(TemplateError):
        parse_stored_template(["not", "an", "object"])
