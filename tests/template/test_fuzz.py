"""Property-based fuzz: any JSON body gives a model or a TemplateError (JSON-serializable), nothing else."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagebuilder.template import (
    SUPPORTED_API_VERSIONS,
    TemplateError,
    apply_update,
    parse_template,
    parse_template_update,
    parse_trigger,
)
from imagebuilder.template import models as M
from tests.template.conftest import FULL_TEMPLATE, mutate

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Words the schema knows, so random objects often look like real ones and reach deep validators.
VOCAB = sorted(
    {
        (f.alias or n)
        for model in (
            M.ImageTemplate,
            M.ImageTemplateProperties,
            M.PlatformImageSource,
            M.SharedImageVersionSource,
            M.ShellCustomizer,
            M.PowerShellCustomizer,
            M.FileCustomizer,
            M.WindowsRestartCustomizer,
            M.SharedImageDistributor,
            M.ManagedImageDistributor,
            M.TargetRegion,
            M.ImageTemplateVmProfile,
            M.VirtualNetworkConfig,
            M.ImageTemplateIdentity,
            M.ScheduleTriggerProperties,
        )
        for n, f in model.model_fields.items()
    }
    | {"provisioningState", "lastRunStatus", "exactVersion", "id", "name", "systemData"}
)
TAGS = [
    *M.SOURCE_TYPES,
    *M.CUSTOMIZER_TYPES,
    *M.DISTRIBUTOR_TYPES,
    *M.TRIGGER_KINDS,
    "Latest",
    "Source",
    "ISO",
    "UserAssigned",
    "None",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(TAGS)
    | st.sampled_from(["latest", "/tmp/x", "C:\\x", "https://e.com/s.sh", "a" * 64, "0 0 3 * * *", "westus"])
)
keys = st.sampled_from(VOCAB) | st.text(max_size=10)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)
PATHS: list[str] = []


def _collect(node: Any, path: str) -> None:
    if path:
        PATHS.append(path)
    if isinstance(node, dict):
        for k, v in node.items():
            if "." not in k:  # identity resource ids cannot be addressed by a dotted path
                _collect(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _collect(v, f"{path}[{i}]")


_collect(FULL_TEMPLATE, "")


def _check(fn: Any, body: Any, api_version: str) -> Any:
    before = copy.deepcopy(body)
    try:
        result = fn(body, api_version=api_version)
    except TemplateError as err:
        assert body == before  # the request body is never modified
        json.dumps(err.to_arm())
        assert err.code and err.message
        for detail in err.details:
            assert detail.code and detail.message
        return None
    assert body == before
    return result


@SETTINGS
@given(body=json_values, api_version=st.sampled_from(SUPPORTED_API_VERSIONS))
def test_random_bodies(body: Any, api_version: str) -> None:
    for fn in (parse_template, parse_template_update, parse_trigger):
        _check(fn, body, api_version)


@SETTINGS
@given(path=st.sampled_from(PATHS), value=json_values, api_version=st.sampled_from(SUPPORTED_API_VERSIONS))
def test_valid_template_with_one_random_value(path: str, value: Any, api_version: str) -> None:
    body = mutate(FULL_TEMPLATE, path, value)
    template = _check(parse_template, body, api_version)
    if template is not None:  # accepted: its ARM JSON is a fixed point
        again = parse_template(template.to_arm(), api_version=api_version)
        assert again.to_arm() == template.to_arm()
        json.dumps(template.to_arm())


@SETTINGS
@given(
    properties=st.dictionaries(st.sampled_from(VOCAB), json_values, max_size=6),
    api_version=st.sampled_from(SUPPORTED_API_VERSIONS),
)
def test_random_properties_objects(properties: dict[str, Any], api_version: str) -> None:
    _check(parse_template, {"location": "westus", "properties": properties}, api_version)
    _check(parse_trigger, {"properties": properties}, api_version)
    update = _check(parse_template_update, {"properties": properties, "tags": {}}, api_version)
    if update is not None:
        try:
            apply_update(parse_template(FULL_TEMPLATE), update)
        except TemplateError as err:
            json.dumps(err.to_arm())
