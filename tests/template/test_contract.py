"""Contract test: the models against the OpenAPI definitions of the 2025-10-01 spec, so drift is caught.

Every property of every modelled definition exists in its model under the same JSON name, enum values
match the models' Literal types, and discriminator values match. Read-only properties are server state:
modelled by the response models, or listed in the input model's `read_only` (ignored, as ARM does).
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from imagebuilder import template as T
from imagebuilder.template import models as M

SPEC = Path(__file__).resolve().parents[2] / "spec" / "imagebuilder-2025-10-01.openapi.json"
DEFS: dict[str, Any] = json.loads(SPEC.read_text())["definitions"]

MODELS: dict[str, type[BaseModel]] = {
    "ImageTemplate": T.ImageTemplate,
    "ImageTemplateProperties": T.ImageTemplateProperties,
    "ImageTemplatePlatformImageSource": T.PlatformImageSource,
    "PlatformImagePurchasePlan": T.PlatformImagePurchasePlan,
    "ImageTemplateManagedImageSource": T.ManagedImageSource,
    "ImageTemplateSharedImageVersionSource": T.SharedImageVersionSource,
    "ImageTemplateShellCustomizer": T.ShellCustomizer,
    "ImageTemplatePowerShellCustomizer": T.PowerShellCustomizer,
    "ImageTemplateRestartCustomizer": T.WindowsRestartCustomizer,
    "ImageTemplateWindowsUpdateCustomizer": T.WindowsUpdateCustomizer,
    "ImageTemplateFileCustomizer": T.FileCustomizer,
    "ImageTemplateShellValidator": T.ShellValidator,
    "ImageTemplatePowerShellValidator": T.PowerShellValidator,
    "ImageTemplateFileValidator": T.FileValidator,
    "ImageTemplateManagedImageDistributor": T.ManagedImageDistributor,
    "ImageTemplateSharedImageDistributor": T.SharedImageDistributor,
    "ImageTemplateVhdDistributor": T.VhdDistributor,
    "TargetRegion": T.TargetRegion,
    "DistributeVersionerLatest": T.DistributeVersionerLatest,
    "DistributeVersionerSource": T.DistributeVersionerSource,
    "ImageTemplateVmProfile": T.ImageTemplateVmProfile,
    "VirtualNetworkConfig": T.VirtualNetworkConfig,
    "ImageTemplatePropertiesOptimize": T.ImageTemplateOptimize,
    "ImageTemplatePropertiesOptimizeVmBoot": M.OptimizeVmBoot,
    "ImageTemplatePropertiesOptimizeWorkload": M.OptimizeWorkload,
    "ImageTemplatePropertiesValidate": T.ImageTemplateValidate,
    "ImageTemplatePropertiesErrorHandling": T.ImageTemplateErrorHandling,
    "ImageTemplateAutoRun": T.ImageTemplateAutoRun,
    "DataDisk": T.DataDisk,
    "ImageTemplateIdentity": T.ImageTemplateIdentity,
    "UserAssignedIdentity": M.UserAssignedIdentity,
    "ImageTemplateUpdateParameters": T.ImageTemplateUpdate,
    "ImageTemplateUpdateParametersProperties": T.ImageTemplateUpdateProperties,
    "ImageTemplateLastRunStatus": T.ImageTemplateLastRunStatus,
    "ProvisioningError": T.ProvisioningError,
    "RunOutput": T.RunOutput,
    "RunOutputProperties": T.RunOutputProperties,
    "Trigger": T.TriggerResource,
    "SourceImageTriggerProperties": T.SourceImageTriggerProperties,
    "TriggerStatus": T.TriggerStatus,
}
# ARM common types (TrackedResource / ProxyResource) the spec pulls from another file.
COMMON = {
    "ImageTemplate": {"location", "tags"},
}
# Spec-required properties that the models accept without, on purpose.
LENIENT_REQUIRED = {
    ("ImageTemplate", "identity"): "2019-05-01-preview templates have none; checked per api-version instead",
}
# Spec definitions deliberately without a model of their own.
NOT_MODELLED = {
    "ImageTemplateSource",
    "ImageTemplateCustomizer",
    "ImageTemplateInVMValidator",
    "ImageTemplateDistributor",
    "DistributeVersioner",
    "TriggerProperties",  # discriminated bases: folded into each subtype
    "ImageTemplateListResult",
    "RunOutputCollection",
    "TriggerCollection",
    "Operation",
    "OperationDisplay",
    "OperationListResult",  # list/operations envelopes: shaped by the API layer
}


def _merged(name: str) -> tuple[dict[str, Any], set[str], str | None]:
    """Properties, required names and discriminator value of a definition, with its allOf bases."""
    spec = DEFS[name]
    props = dict(spec.get("properties", {}))
    required = set(spec.get("required", []))
    for base in spec.get("allOf", []):
        ref = base["$ref"]
        if ref.startswith("#/definitions/"):
            bprops, breq, _ = _merged(ref.rsplit("/", 1)[1])
            props = {**bprops, **props}
            required |= breq
    return props, required, spec.get("x-ms-discriminator-value")


def _aliases(model: type[BaseModel]) -> dict[str, str]:
    return {(f.alias or n): n for n, f in model.model_fields.items()}


def _literals(annotation: Any) -> set[str]:
    found: set[str] = set()
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        found |= {a for a in typing.get_args(annotation) if isinstance(a, str)}
    elif origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found |= _literals(arg)
    return found


def test_every_definition_is_modelled_or_explained() -> None:
    enums = {n for n, d in DEFS.items() if "enum" in d}
    assert set(DEFS) - enums - set(MODELS) - NOT_MODELLED == set()


@pytest.mark.parametrize("definition", sorted(MODELS))
def test_properties_exist_in_the_model(definition: str) -> None:
    model = MODELS[definition]
    props, required, _ = _merged(definition)
    aliases = _aliases(model)
    ignored = set(getattr(model, "read_only", ()))
    read_only = {p for p, schema in props.items() if schema.get("readOnly")}
    expected = (set(props) | COMMON.get(definition, set())) - read_only
    missing = expected - set(aliases)
    assert missing == set(), f"{definition}: the model lacks {sorted(missing)}"
    # read-only members are either modelled (response models) or ignored on input, never rejected
    unhandled = read_only - set(aliases) - ignored
    assert unhandled == set(), f"{definition}: read-only {sorted(unhandled)} would be rejected"
    for prop in required - {p for d, p in LENIENT_REQUIRED if d == definition}:
        if prop in aliases and prop not in ("type", "scheme", "kind"):
            field = model.model_fields[aliases[prop]]
            assert field.is_required(), f"{definition}.{prop} is required by the spec"


@pytest.mark.parametrize("definition", sorted(MODELS))
def test_enum_values_match(definition: str) -> None:
    model = MODELS[definition]
    props, _, discriminator_value = _merged(definition)
    aliases = _aliases(model)
    for prop, schema in props.items():
        if prop not in aliases:
            continue
        ref = schema.get("$ref", "")
        target = DEFS.get(ref.rsplit("/", 1)[1]) if ref.startswith("#/definitions/") else None
        if target is not None and "enum" in target:
            annotation = model.model_fields[aliases[prop]].annotation
            literals = _literals(annotation)
            if literals:  # response models keep some enums as plain strings (modelAsString)
                assert literals == set(target["enum"]), f"{definition}.{prop}"
            else:
                assert target.get("x-ms-enum", {}).get("modelAsString", False) or definition in (
                    "ProvisioningError",
                ), f"{definition}.{prop} should be a Literal of {target['enum']}"
    if discriminator_value is not None:
        tag_field = next(f for f in ("type", "scheme", "kind") if f in aliases)
        assert _literals(model.model_fields[tag_field].annotation) == {discriminator_value}


def test_unions_cover_every_subtype() -> None:
    def subtypes(base: str) -> set[str]:
        return {
            d.get("x-ms-discriminator-value")
            for d in DEFS.values()
            if {"$ref": f"#/definitions/{base}"} in d.get("allOf", [])
        }

    assert subtypes("ImageTemplateSource") == set(M.SOURCE_TYPES)
    assert subtypes("ImageTemplateCustomizer") == set(M.CUSTOMIZER_TYPES)
    assert subtypes("ImageTemplateInVMValidator") == set(M.VALIDATOR_TYPES)
    assert subtypes("ImageTemplateDistributor") == set(M.DISTRIBUTOR_TYPES)
    assert subtypes("DistributeVersioner") == {"Latest", "Source"}
    assert subtypes("TriggerProperties") | {"Schedule"} == set(M.TRIGGER_KINDS)


@pytest.mark.parametrize(
    ("definition", "literal"),
    [
        ("ProvisioningState", M.ProvisioningState),
        ("RunState", M.RunState),
        ("RunSubState", M.RunSubState),
        ("ProvisioningErrorCode", M.ProvisioningErrorCode),
        ("SharedImageStorageAccountType", M.StorageAccountType),
        ("OnBuildError", M.OnBuildError),
    ],
)
def test_enum_aliases_match(definition: str, literal: Any) -> None:
    assert set(typing.get_args(literal)) == set(DEFS[definition]["enum"])


def test_numeric_bounds_match() -> None:
    props = DEFS["ImageTemplateProperties"]["properties"]["buildTimeoutInMinutes"]
    assert (props["minimum"], props["maximum"]) == (0, M.MAX_BUILD_TIMEOUT_MINUTES)
    assert DEFS["ImageTemplateDistributor"]["properties"]["runOutputName"][
        "pattern"
    ] == M.NAME_PATTERN.pattern.replace("\\-", "-")
