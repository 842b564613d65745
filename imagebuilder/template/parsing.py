"""Request bodies in, models out: PUT/PATCH/trigger parsing, pydantic errors as AIB/ARM `TemplateError`s.

Read-only members (id, name, type, provisioningState, lastRunStatus, exactVersion, ...) are dropped by
the models themselves (`ArmModel.read_only`), as ARM ignores them. Members no model knows are dropped too,
as AIB drops them (its own samples spell `aritfactTags`), and reported as `IgnoredMember`s naming their JSON
path and the member meant; `strict_members=True` (the app setting IMAGEBUILDER_STRICT_TEMPLATE_MEMBERS)
refuses them instead. Every problem pydantic finds becomes one `TemplateError` naming its JSON path;
several come back together in `.details`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError

from imagebuilder.template import errors as E
from imagebuilder.template.errors import TemplateError
from imagebuilder.template.models import (
    CUSTOMIZER_TYPES,
    DISTRIBUTOR_TYPES,
    NAME_PATTERN,
    SOURCE_TYPES,
    STORED,
    TRIGGER_KINDS,
    UNKNOWN_MEMBERS,
    VALIDATOR_TYPES,
    ImageTemplate,
    ImageTemplateUpdate,
    RuleViolation,
    TriggerResource,
    UnknownMember,
)

SUPPORTED_API_VERSIONS: tuple[str, ...] = (
    "2019-05-01-preview",
    "2020-02-14",
    "2021-10-01",
    "2022-02-14",
    "2022-07-01",
    "2023-07-01",
    "2024-02-01",
    "2025-10-01",
)
LATEST_API_VERSION = SUPPORTED_API_VERSIONS[-1]

M = TypeVar("M", bound=BaseModel)

# Properties a PATCH may not touch (AIB templates are immutable apart from these).
_PATCHABLE_TOP = ("tags", "identity", "properties")
_PATCHABLE_PROPERTIES = ("vmProfile", "distribute")
_TEMPLATE_TOP = {k.lower(): k for k in ("location", "tags", "identity", "properties")}
_TEMPLATE_PROPERTIES = {
    k.lower(): k
    for k in (
        "source",
        "customize",
        "optimize",
        "validate",
        "distribute",
        "errorHandling",
        "buildTimeoutInMinutes",
        "vmProfile",
        "additionalDataDisks",
        "stagingResourceGroup",
        "autoRun",
        "managedResourceTags",
    )
}

_TAG_CODES = {
    "source": (E.BAD_SOURCE_TYPE, SOURCE_TYPES),
    "customize": (E.BAD_CUSTOMIZER_TYPE, CUSTOMIZER_TYPES),
    "inVMValidations": (E.BAD_VALIDATOR_TYPE, VALIDATOR_TYPES),
    "distribute": (E.BAD_DISTRIBUTE_TYPE, DISTRIBUTOR_TYPES),
    "versioning": (E.INVALID_PARAMETER, ("Latest", "Source")),
    "properties": (E.INVALID_PARAMETER, TRIGGER_KINDS),
}
_MISSING_CODES = {
    ("source", "PlatformImage"): E.BAD_PIR_SOURCE,
    ("source", "ManagedImage"): E.BAD_MANAGED_IMAGE_SOURCE,
    ("source", "SharedImageVersion"): E.BAD_SHARED_IMAGE_VERSION_SOURCE,
    ("distribute", "SharedImage"): E.BAD_SHARED_IMAGE_DISTRIBUTE,
}
_DISCRIMINATORS = ("type", "scheme", "kind")
_TAG_FIELDS = {"versioning": "scheme", "properties": "kind"}
_RETIRED_TYPES = {
    "ISO": "ISO sources were retired by Image Builder: use a PlatformImage source instead.",
}


# ----------------------------------------------------------------------------------------- public API


def check_api_version(api_version: str) -> None:
    """Raise TemplateError unless `api_version` is one this service accepts."""
    if api_version not in SUPPORTED_API_VERSIONS:
        raise TemplateError(
            E.INVALID_API_VERSION,
            f"The api-version {_short(api_version)} is not supported. Supported versions: "
            f"{', '.join(SUPPORTED_API_VERSIONS)}.",
            "api-version",
        )


def validate_resource_name(name: str, target: str = "imageTemplateName") -> str:
    """Check an image template, trigger or run output name against ^[A-Za-z0-9-_.]{1,64}$."""
    if isinstance(name, str) and NAME_PATTERN.match(name) and not name.strip("."):
        raise TemplateError(
            E.INVALID_RESOURCE_NAME,
            f"The name {_short(name)} is invalid: a name of only dots addresses a path, not a resource; "
            "use 1 to 64 letters, digits, '-', '_' or '.' with at least one letter or digit.",
            target,
        )
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise TemplateError(
            E.INVALID_RESOURCE_NAME,
            f"The name {_short(name)} is invalid: use 1 to 64 letters, digits, '-', '_' or '.'.",
            target,
        )
    return name


class IgnoredMember(NamedTuple):
    """A member that was ignored: its JSON path and, when one is close, the member probably meant."""

    target: str
    suggestion: str | None = None

    @property
    def message(self) -> str:
        text = f"ignored unknown member {self.target}"
        return text + (f"; did you mean {self.suggestion}?" if self.suggestion else "")


def parse_template(
    body: Any,
    *,
    api_version: str = LATEST_API_VERSION,
    name: str | None = None,
    strict_members: bool = False,
    warnings: list[IgnoredMember] | None = None,
) -> ImageTemplate:
    """Validate a PUT body into an ImageTemplate; raise TemplateError listing every problem in `.details`.

    Unknown members are dropped and appended to `warnings` (when given), or refused with
    `strict_members`."""
    check_api_version(api_version)
    if name is not None:
        validate_resource_name(name)
    obj = _require_object(body)
    return _validate_lenient(ImageTemplate, obj, api_version, strict_members, warnings)


def parse_stored_template(resource: Any) -> ImageTemplate:
    """A template as stored (`BuildInput.template`, `TemplateInput.template`: the resource JSON, read-only
    members and all) as the frozen model, for a build or a template-lifecycle call of a provider.

    It was valid when it was PUT, so the parse must not refuse it again for rules of the PUT: only types
    and structure are checked (validation context `models.STORED`, no api-version), the prose rules are not
    (they may have changed since, and providers take what the ARM model refuses, e.g. the local
    provider's file:// URIs), and members no model knows are dropped silently. A resource that still
    cannot be read (stored by hand, or written by a schema this one no longer reads) raises
    `TemplateError` naming the JSON path, e.g. `properties.customize[0].type`; nothing else."""
    obj = _require_object(resource)
    try:
        return _validate(ImageTemplate, obj, obj, {STORED: True, UNKNOWN_MEMBERS: []})
    except RecursionError:
        raise TemplateError(E.INVALID_REQUEST_CONTENT, "The template is nested too deeply to read.") from None


def parse_template_update(
    body: Any,
    *,
    api_version: str = LATEST_API_VERSION,
    strict_members: bool = False,
    warnings: list[IgnoredMember] | None = None,
) -> ImageTemplateUpdate:
    """Validate a PATCH body: only tags, identity, properties.vmProfile and .distribute may change
    (unknown members as in `parse_template`)."""
    check_api_version(api_version)
    obj = _require_object(body)
    problems: list[TemplateError] = []
    for key in obj:
        canonical = _TEMPLATE_TOP.get(key.lower()) if isinstance(key, str) else None
        if canonical is not None and canonical not in _PATCHABLE_TOP:
            problems.append(_not_patchable(canonical))
    props = _get_ci(obj, "properties")
    if isinstance(props, Mapping):
        for key in props:
            canonical = _TEMPLATE_PROPERTIES.get(key.lower()) if isinstance(key, str) else None
            if canonical is not None and canonical not in _PATCHABLE_PROPERTIES:
                problems.append(_not_patchable(f"properties.{canonical}"))
    if problems:
        raise _combine(problems)
    return _validate_lenient(ImageTemplateUpdate, obj, api_version, strict_members, warnings)


def apply_update(template: ImageTemplate, update: ImageTemplateUpdate) -> ImageTemplate:
    """The template after a PATCH: tags, identity, vmProfile and distribute replaced when given."""
    data = template.to_json()
    if update.tags is not None:
        data["tags"] = dict(update.tags)
    if update.identity is not None:
        data["identity"] = update.identity.to_json()
    if update.properties is not None:
        if update.properties.vm_profile is not None:
            data["properties"]["vmProfile"] = update.properties.vm_profile.to_json()
        if update.properties.distribute is not None:
            data["properties"]["distribute"] = [d.to_json() for d in update.properties.distribute]
    return _validate(ImageTemplate, data, data, None)


def parse_trigger(body: Any, *, api_version: str = LATEST_API_VERSION) -> TriggerResource:
    """Validate a trigger PUT body: kind SourceImage (AIB) or Schedule (our extension)."""
    check_api_version(api_version)
    obj = _require_object(body)
    return _validate(TriggerResource, obj, obj, {"api_version": api_version})


def input_fingerprint(
    template: ImageTemplate, source_exact_version: str | None, artifact_sha256: Mapping[str, str]
) -> str:
    """A stable hash of what feeds a build: source (+ resolved version), customize, optimize, validate,
    disks, distribute targets and the SHA-256 of every fetched artifact (keyed by URI).

    Tags, identity, VM size, network, timeout, error handling and autoRun are left out: they change
    how a build runs, not what it produces.
    """
    props = template.properties
    vm = props.vm_profile
    doc = {
        "v": 1,
        "source": props.source.to_json(),
        "sourceExactVersion": source_exact_version,
        "customize": [c.to_json() for c in props.customize or []],
        "optimize": props.optimize.to_json() if props.optimize else None,
        "validate": props.validate_.to_json() if props.validate_ else None,
        "osDiskSizeGB": vm.os_disk_size_gb if vm else None,
        "additionalDataDisks": [d.to_json() for d in props.additional_data_disks or []],
        "distribute": [d.to_json() for d in props.distribute],
        "artifacts": {k: v.lower() for k, v in sorted(artifact_sha256.items())},
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# ------------------------------------------------------------------------------------------- helpers


def _validate_lenient(
    model: type[M], obj: dict[str, Any], api_version: str, strict: bool, warnings: list[IgnoredMember] | None
) -> M:
    context: dict[str, Any] = {"api_version": api_version}
    dropped: list[UnknownMember] = []
    if not strict:
        context[UNKNOWN_MEMBERS] = dropped
    try:
        return _validate(model, obj, obj, context)
    finally:  # also when the body is refused: a misspelt member often explains the refusal (aib lint)
        if warnings is not None and dropped:
            paths = _paths(obj)
            seen: set[str] = set()
            for member in dropped:
                where = paths.get(member.node)
                if where is None:  # not an object of the body (cannot happen; never guess a path)
                    continue
                target = f"{where}.{member.name}" if where else member.name
                if target not in seen:
                    seen.add(target)
                    warnings.append(IgnoredMember(target, _did_you_mean(member.name, member.known)))


def _paths(body: Any) -> dict[int, str]:
    """id() of every JSON object in the body -> its JSON path ("" for the body itself)."""
    out: dict[int, str] = {}
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, Mapping):
            out[id(node)] = path
            for k, v in node.items():
                if isinstance(v, Mapping | list):
                    name = str(k)
                    if _plain(name):
                        stack.append((v, f"{path}.{name}" if path else name))
                    else:  # e.g. an identity resource id as a key
                        stack.append((v, f"{path}[{json.dumps(name)}]"))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, Mapping | list):
                    stack.append((v, f"{path}[{i}]"))
    return out


def _plain(name: str) -> bool:
    return name.replace("_", "a").isalnum()


def _did_you_mean(name: str, known: tuple[str, ...]) -> str | None:
    """The known member a misspelt or misplaced one most likely meant (`aritfactTags` -> artifactTags,
    `tags` on a distribute target -> artifactTags), or None."""
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.75)
    if close:
        return lowered[close[0]]
    tail = [k for k in known if len(name) >= 3 and k.lower().endswith(name.lower())]
    return tail[0] if len(tail) == 1 else None


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise TemplateError(
            E.INVALID_REQUEST_CONTENT,
            f"The request body must be a JSON object, got {_json_type(body)}.",
        )
    return dict(body)


def _not_patchable(target: str) -> TemplateError:
    return TemplateError(
        E.PROPERTY_CHANGE_NOT_ALLOWED,
        f"'{target}' cannot be changed by an update: image templates are immutable apart from tags, "
        "identity, properties.vmProfile and properties.distribute. "
        "Delete and re-create the template to change it.",
        target,
    )


def _validate(model: type[M], data: dict[str, Any], original: Any, context: dict[str, Any] | None) -> M:
    try:
        # JSON members by their ARM (camelCase) names only; snake_case names are for Python callers.
        return model.model_validate(data, context=context, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise _combine(_convert(exc, original)) from None


def _combine(problems: list[TemplateError]) -> TemplateError:
    if len(problems) == 1:
        return problems[0]
    first = problems[0]
    return TemplateError(
        E.INVALID_TEMPLATE,
        f"The request has {len(problems)} problems; the first: {first.message} See 'details' for all.",
        first.target,
        problems,
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


class _Walk:
    """Follows a pydantic error location through the raw body: JSON path, tag contexts, the value."""

    def __init__(self, loc: tuple[int | str, ...], body: Any) -> None:
        self.parts: list[str] = []
        self.container: str | None = None  # last named field before a discriminated object
        self.tag: str | None = None
        node: Any = body
        last_name: str | None = None
        for el in loc:
            if isinstance(el, int):
                self.parts.append(f"[{el}]")
                node = node[el] if isinstance(node, list) and 0 <= el < len(node) else None
                continue
            if (
                isinstance(node, Mapping)
                and el not in node
                and any(_get_ci(node, k) == el for k in _DISCRIMINATORS)
            ):
                self.container, self.tag = last_name, el
                continue
            self.parts.append(("." if self.parts else "") + el)
            last_name = el
            node = _get_ci(node, el) if isinstance(node, Mapping) else None
        self.last_name = last_name
        self.value = node

    @property
    def path(self) -> str:
        return "".join(self.parts)

    def join(self, sub: str) -> str:
        if not sub:
            return self.path
        if not self.path:
            return sub
        return self.path + ("" if sub.startswith("[") else ".") + sub


def _get_ci(node: Mapping[Any, Any], key: str) -> Any:
    """node[key], matching the key case-insensitively when there is no exact match (as the models do)."""
    if key in node:
        return node[key]
    lowered = key.lower()
    return next((v for k, v in node.items() if isinstance(k, str) and k.lower() == lowered), None)


def _convert(exc: ValidationError, body: Any) -> list[TemplateError]:
    out: list[TemplateError] = []
    for err in exc.errors(include_url=False):
        walk = _Walk(tuple(err["loc"]), body)
        etype = err["type"]
        ctx = err.get("ctx") or {}
        cause = ctx.get("error")
        if isinstance(cause, RuleViolation):
            for issue in cause.issues:
                out.append(TemplateError(issue.code, issue.message, walk.join(issue.field)))
            continue
        path = walk.path
        if etype in ("union_tag_invalid", "union_tag_not_found"):
            out.append(_bad_tag(walk, etype, ctx))
        elif etype == "missing":
            code = _MISSING_CODES.get((walk.container or "", walk.tag or ""), E.MISSING_REQUIRED_PROPERTY)
            if path == "location":
                code = E.LOCATION_REQUIRED
            out.append(TemplateError(code, f"The required property '{path}' is missing: add it.", path))
        elif etype == "extra_forbidden":
            where = path.rpartition(".")[0] or "the request body"
            out.append(
                TemplateError(
                    E.INVALID_REQUEST_CONTENT,
                    f"Could not find member '{walk.last_name}' on {where}: it is not a property of this "
                    "object (check its spelling and case).",
                    path,
                )
            )
        elif etype == "literal_error":
            expected = ctx.get("expected", "")
            out.append(
                TemplateError(
                    E.INVALID_PARAMETER,
                    f"'{path}' must be one of {expected}, got {_short(walk.value)}.",
                    path,
                )
            )
        elif etype.endswith("_type") or etype in (
            "model_attributes_type",
            "dataclass_type",
            "is_instance_of",
        ):
            out.append(
                TemplateError(
                    E.INVALID_REQUEST_CONTENT,
                    f"'{path or 'body'}' has the wrong JSON type ({_json_type(walk.value)}): {err['msg']}.",
                    path or None,
                )
            )
        else:
            out.append(
                TemplateError(
                    E.INVALID_PARAMETER,
                    f"'{path}' is invalid: {err['msg']} (got {_short(walk.value)}).",
                    path,
                )
            )
    return out


def _bad_tag(walk: _Walk, etype: str, ctx: Mapping[str, Any]) -> TemplateError:
    path = walk.path
    key = walk.last_name or ""
    field = _TAG_FIELDS.get(key, "type")
    code, allowed = _TAG_CODES.get(key, (E.INVALID_PARAMETER, ()))
    target = f"{path}.{field}" if path else field
    node = walk.value
    given = _get_ci(node, field) if isinstance(node, Mapping) else None
    choices = ", ".join(allowed) if allowed else str(ctx.get("expected_tags", ""))
    if not isinstance(node, Mapping):
        return TemplateError(
            E.INVALID_REQUEST_CONTENT,
            f"'{path}' must be a JSON object with a '{field}' ({choices}), got {_json_type(node)}.",
            path or None,
        )
    if given is None:
        return TemplateError(code, f"'{target}' is missing: set it to one of {choices}.", target)
    if not isinstance(given, str):
        return TemplateError(code, f"'{target}' must be a string, one of {choices}.", target)
    hint = _RETIRED_TYPES.get(given, "") if isinstance(given, str) else ""
    return TemplateError(
        code,
        f"'{target}' {_short(given)} is not supported: use one of {choices}." + (f" {hint}" if hint else ""),
        target,
    )


def _short(value: Any) -> str:
    try:
        text = json.dumps(value, default=str)
    except (ValueError, RecursionError):
        text = "<unprintable>"
    return text if len(text) <= 80 else text[:77] + "..."
