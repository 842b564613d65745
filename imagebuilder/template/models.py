"""Frozen pydantic models of the AIB image template schema (2025-10-01, a superset of older versions).

Field names are snake_case; aliases are ARM's camelCase, so `model_dump(by_alias=True, exclude_none=True,
mode="json")` gives ARM JSON back. Rules the spec states only in prose are model validators raising
`RuleViolation`, which `parsing` turns into `TemplateError`s naming the JSON path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from imagebuilder.template import errors as E
from imagebuilder.template.ncrontab import CronSchedule, ScheduleError

DEFAULT_BUILD_TIMEOUT_MINUTES = 240
MAX_BUILD_TIMEOUT_MINUTES = 960
NAME_PATTERN = re.compile(r"^[A-Za-z0-9\-_.]{1,64}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_PIR_VERSION = re.compile(r"^(latest|\d+(\.\d+){0,3})$", re.IGNORECASE)
_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")
_GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")
_RG_ID = re.compile(r"^/subscriptions/[^/]+/resourceGroups/[A-Za-z0-9_\-.()]{1,90}$", re.IGNORECASE)
_MSI_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.ManagedIdentity"
    r"/userAssignedIdentities/[^/]+$",
    re.IGNORECASE,
)
# Lenient on purpose (the spec's own examples say ".../gallery/<g>/images/<i>"): the provider resolves it.
_GALLERY_IMAGE_ID = re.compile(
    r"^(?P<image>/subscriptions/[^/]+/.+/images/[^/]+)(/versions/(?P<version>[^/]+))?$", re.IGNORECASE
)
_VERSION_ID = re.compile(r"/versions/(?P<version>[^/]+)$", re.IGNORECASE)


IDENTITY_REQUIRED_SINCE = "2020-02-14"
MIN_BUILD_TIMEOUT_MINUTES = 6
INT32_MAX = 2**31 - 1
Int32 = Annotated[int, Field(ge=-(2**31), le=INT32_MAX)]  # the spec's "format": "int32"
RESOURCE_READ_ONLY = ("id", "name", "type", "systemData", "etag")


def _api_version(info: ValidationInfo) -> str | None:
    ctx = info.context
    value = ctx.get("api_version") if isinstance(ctx, dict) else None
    return value if isinstance(value, str) else None


#: Validation-context key: the input is a template as stored after a create that succeeded (what a build
#: reads back). Types and structure are checked as always; the rules stated in prose (every `RuleViolation`:
#: URI schemes, name patterns, step limits, api-version rules...) are not, since they were checked at PUT
#: under the rules of that day and may have changed since: a stored template must always load.
STORED = "stored"


def _stored(info: ValidationInfo) -> bool:
    ctx = info.context
    return isinstance(ctx, dict) and ctx.get(STORED) is True


class Issue(NamedTuple):
    """One broken rule: `field` is the JSON path relative to the model that found it ("" = the model)."""

    code: str
    message: str
    field: str = ""


class RuleViolation(ValueError):
    """Raised by model validators; carries every broken rule of one model (pydantic keeps it in ctx)."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(i.message for i in issues))
        self.issues = issues


def _q(value: object) -> str:
    """repr() of user input for a message, cut short: errors echo input, never all of it."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _raise(issues: list[Issue]) -> None:
    if issues:
        raise RuleViolation(issues)


#: Validation-context key: a list to collect unknown members in, instead of refusing them.
UNKNOWN_MEMBERS = "unknown_members"


class UnknownMember(NamedTuple):
    """A member no model knows, dropped during validation: `node` is id() of the JSON object holding it."""

    node: int
    name: str
    known: tuple[str, ...]


class ArmModel(BaseModel):
    """Base of every schema model: frozen, camelCase aliases, strict JSON types, unknown members rejected."""

    model_config = ConfigDict(
        frozen=True,
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        strict=True,
    )

    # Read-only members ARM ignores in request bodies: dropped before validation, never dumped.
    read_only: ClassVar[tuple[str, ...]] = ()
    _case_map: ClassVar[dict[str, str] | None] = None

    def to_json(self) -> dict[str, Any]:
        """ARM JSON (camelCase, unset fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    @model_validator(mode="before")
    @classmethod
    def _fold_key_case(cls, data: Any, info: ValidationInfo) -> Any:
        """Match member names case-insensitively, as AIB does (docs spell `imageVersionID`); with an
        `unknown_members` list in the validation context, drop unknown members (as AIB does) and record
        each one there as an `UnknownMember` instead of refusing it."""
        if not isinstance(data, dict):
            return data
        if cls.__dict__.get("_case_map") is None:
            cls._case_map = {
                (f.alias or name).lower(): (f.alias or name) for name, f in cls.model_fields.items()
            }
        case_map = cls.__dict__["_case_map"]
        ctx = info.context if isinstance(info.context, dict) else None
        dropped = ctx.get(UNKNOWN_MEMBERS) if ctx is not None else None
        if isinstance(dropped, list) and cls.model_config.get("extra") == "forbid":
            ignored = {name.lower() for name in cls.read_only}
            unknown = [
                k
                for k in data
                if isinstance(k, str) and k.lower() not in case_map and k.lower() not in ignored
            ]
            for k in unknown:
                dropped.append(UnknownMember(id(data), k, tuple(case_map.values())))
            if unknown:
                data = {k: v for k, v in data.items() if k not in unknown}
        if cls.read_only:
            ignored = {name.lower() for name in cls.read_only}
            data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.lower() in ignored)}
        out: dict[Any, Any] = {}
        issues: list[Issue] = []
        exact = [k for k in data if isinstance(k, str) and k in case_map.values()]
        for key in exact:
            out[key] = data[key]
        for key, value in data.items():
            if key in out and key in exact:
                continue
            canonical = case_map.get(key.lower(), key) if isinstance(key, str) else key
            if canonical in out:
                issues.append(
                    Issue(
                        E.INVALID_REQUEST_CONTENT,
                        f"'{canonical}' is given twice (as {_q(key)} too): give it once.",
                        str(key),
                    )
                )
                continue
            out[canonical] = value
        _raise(issues)
        return out


# --------------------------------------------------------------------------------------------- helpers


def _check_uri(value: str | None, field: str, code: str = E.INVALID_PARAMETER) -> list[Issue]:
    if value is None:
        return []
    try:
        parts = urlsplit(value)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. a broken IPv6 literal
        ok = False
    if not ok:
        return [Issue(code, f"'{field}' must be an absolute http(s) URI, got {_q(value)}.", field)]
    return []


def _check_sha(value: str, info: ValidationInfo) -> str:
    if value == "":
        return value
    if not _SHA256.match(value):
        if _stored(info):
            return value  # the fetch compares it and names the field
        raise RuleViolation(
            [
                Issue(
                    E.INVALID_PARAMETER,
                    "sha256Checksum must be 64 hexadecimal characters (the SHA-256 of the file).",
                )
            ]
        )
    return value.lower()


Sha256 = Annotated[str, AfterValidator(_check_sha)]


MAX_TAGS = 50
# Steps per template. Every step is one durable activity whose input carries the template, so a run's
# history grows as steps x template size and each replay re-reads it: 1000 trivial Shell steps took
# ~0.6 s/step and grew the runtime from ~130 MB to ~640 MB. These bound both (see README, API notes).
MAX_CUSTOMIZERS = 100
MAX_VALIDATORS = 100
MAX_HISTORY_BYTES = 64 * 1024 * 1024  # steps x template JSON size, i.e. the inputs a run's history keeps
_TAG_NAME_FORBIDDEN = set("<>%&\\?/")


def _check_tags(tags: dict[str, str], info: ValidationInfo) -> dict[str, str]:
    """ARM's tag limits (they apply to the template and to everything tagged from it)."""
    if _stored(info):
        return tags
    issues: list[Issue] = []
    if len(tags) > MAX_TAGS:
        issues.append(Issue(E.INVALID_PARAMETER, f"At most {MAX_TAGS} tags are allowed, got {len(tags)}."))
    for name, value in tags.items():
        if not name or len(name) > 512 or _TAG_NAME_FORBIDDEN & set(name):
            issues.append(
                Issue(
                    E.INVALID_PARAMETER,
                    f"Tag name {_q(name)} is invalid: use 1 to 512 characters, none of < > % & \\ ? /.",
                    name if name and "." not in name else "",
                )
            )
        elif len(value) > 256:
            issues.append(
                Issue(
                    E.INVALID_PARAMETER,
                    f"The value of tag {_q(name)} is longer than 256 characters.",
                    name if "." not in name else "",
                )
            )
    _raise(issues)
    return tags


Tags = Annotated[dict[str, str], AfterValidator(_check_tags)]


def _check_script(
    script_uri: str | None, inline: list[str] | None, no_script_code: str, kind: str
) -> list[Issue]:
    has_uri = bool(script_uri)
    has_inline = bool(inline)
    if has_uri and has_inline:
        return [
            Issue(
                E.INVALID_PARAMETER,
                f"A {kind} takes exactly one of 'scriptUri' or 'inline', not both: remove one of them.",
                "inline",
            )
        ]
    if not has_uri and not has_inline:
        return [
            Issue(
                no_script_code,
                f"A {kind} needs a script: give exactly one of 'scriptUri' (a URI) or 'inline' "
                "(a list of commands).",
                "scriptUri",
            )
        ]
    issues = _check_uri(script_uri, "scriptUri")
    if inline is not None:
        for i, line in enumerate(inline):
            if "\x00" in line:
                issues.append(
                    Issue(E.INVALID_PARAMETER, "Inline commands cannot contain NUL.", f"inline[{i}]")
                )
    return issues


def _check_destination(destination: str) -> list[Issue]:
    if destination == "":
        return [Issue(E.INVALID_PARAMETER, "'destination' must not be empty.", "destination")]
    if "\x00" in destination:
        return [Issue(E.INVALID_PARAMETER, "'destination' cannot contain NUL.", "destination")]
    if not (destination.startswith("/") or _WINDOWS_ABS.match(destination)):
        return [
            Issue(
                E.INVALID_PARAMETER,
                f"'destination' must be an absolute path (Linux: starting with '/', Windows: a drive letter "
                f"such as 'C:\\\\'), got {_q(destination)}.",
                "destination",
            )
        ]
    if ".." in re.split(r"[\\/]", destination):
        return [
            Issue(
                E.INVALID_PARAMETER,
                f"'destination' must not contain '..' components, got {_q(destination)}.",
                "destination",
            )
        ]
    return []


def tag_of(key: str) -> Callable[[Any], str | None]:
    """Discriminator lookup: the value of `key` (matched case-insensitively) when it is a string."""

    def get(value: Any) -> str | None:
        if isinstance(value, BaseModel):
            found = getattr(value, key, None)
        elif isinstance(value, dict):
            found = value.get(key)
            if found is None:
                found = next((v for k, v in value.items() if isinstance(k, str) and k.lower() == key), None)
        else:
            return None
        return found if isinstance(found, str) else None

    get.__name__ = f"tag_of_{key}"
    return get


def _small_int(text: str) -> int | None:
    """A non-negative decimal of at most 10 digits, else None (int() of huge strings is slow or refused)."""
    return int(text) if 0 < len(text) <= 10 and text.isascii() and text.isdigit() else None


def is_gallery_version(version: str) -> bool:
    """Compute Gallery image version names: Major.Minor.Patch, each an int32."""
    parts = version.split(".")
    return len(parts) == 3 and all((n := _small_int(p)) is not None and n <= INT32_MAX for p in parts)


def _nonempty(value: str, field: str, code: str) -> list[Issue]:
    if value.strip() == "":
        return [Issue(code, f"'{field}' must not be empty.", field)]
    return []


# --------------------------------------------------------------------------------------------- sources


class PlatformImagePurchasePlan(ArmModel):
    """Purchase plan of a Marketplace image."""

    plan_name: str
    plan_product: str
    plan_publisher: str


class PlatformImageSource(ArmModel):
    """A Marketplace (PIR) image: publisher/offer/sku/version; version may be 'latest'."""

    read_only = ("exactVersion",)

    type: Literal["PlatformImage"]
    publisher: str
    offer: str
    sku: str
    version: str
    plan_info: PlatformImagePurchasePlan | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> PlatformImageSource:
        if _stored(info):
            return self
        issues: list[Issue] = []
        for f in ("publisher", "offer", "sku", "version"):
            issues += _nonempty(getattr(self, f), f, E.BAD_PIR_SOURCE)
        if not issues and not _PIR_VERSION.match(self.version):
            issues.append(
                Issue(
                    E.BAD_PIR_SOURCE,
                    "'version' must be 'latest' or a version like '22.04.202401010', "
                    f"got {_q(self.version)}.",
                    "version",
                )
            )
        _raise(issues)
        return self

    @property
    def is_latest(self) -> bool:
        return self.version.lower() == "latest"

    @property
    def urn(self) -> str:
        return f"{self.publisher}:{self.offer}:{self.sku}:{self.version}"


class ManagedImageSource(ArmModel):
    """A managed image in the user's subscription."""

    type: Literal["ManagedImage"]
    image_id: str

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> ManagedImageSource:
        if _stored(info):
            return self
        _raise(_nonempty(self.image_id, "imageId", E.BAD_MANAGED_IMAGE_SOURCE))
        return self


class SharedImageVersionSource(ArmModel):
    """An image version in an Azure Compute Gallery (or direct shared gallery); version may be 'latest'."""

    read_only = ("exactVersion",)

    type: Literal["SharedImageVersion"]
    image_version_id: str

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> SharedImageVersionSource:
        if _stored(info):
            return self
        m = _VERSION_ID.search(self.image_version_id)
        if not m or not (m.group("version").lower() == "latest" or is_gallery_version(m.group("version"))):
            _raise(
                [
                    Issue(
                        E.BAD_SHARED_IMAGE_VERSION_SOURCE,
                        "'imageVersionId' must be the resource id of an image version, ending in "
                        "'/versions/<major>.<minor>.<patch>' or '/versions/latest', "
                        f"got {_q(self.image_version_id)}.",
                        "imageVersionId",
                    )
                ]
            )
        return self

    @property
    def version(self) -> str:
        m = _VERSION_ID.search(self.image_version_id)
        return m.group("version") if m else ""

    @property
    def is_latest(self) -> bool:
        return self.version.lower() == "latest"


ImageTemplateSource = Annotated[
    Annotated[PlatformImageSource, Tag("PlatformImage")]
    | Annotated[ManagedImageSource, Tag("ManagedImage")]
    | Annotated[SharedImageVersionSource, Tag("SharedImageVersion")],
    Discriminator(tag_of("type")),
]
Source = PlatformImageSource | ManagedImageSource | SharedImageVersionSource
SOURCE_TYPES = ("PlatformImage", "ManagedImage", "SharedImageVersion")

# ------------------------------------------------------------------------------------------ customizers


class _Step(ArmModel):
    name: str | None = None


class _ScriptStep(_Step):
    """A step that runs a script: exactly one of scriptUri / inline (code and wording per subclass)."""

    missing_script_code: ClassVar[str]
    kind: ClassVar[str]

    script_uri: str | None = None
    sha256_checksum: Sha256 | None = None
    inline: list[str] | None = None

    def _issues(self) -> list[Issue]:
        return _check_script(self.script_uri, self.inline, self.missing_script_code, self.kind)

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> _ScriptStep:
        if _stored(info):
            return self
        _raise(self._issues())
        return self


class _PowerShellStep(_ScriptStep):
    """A PowerShell script step: runAsSystem needs runElevated."""

    run_elevated: bool | None = None
    run_as_system: bool | None = None
    valid_exit_codes: list[Int32] | None = None

    def _issues(self) -> list[Issue]:
        return super()._issues() + _check_elevation(self.run_elevated, self.run_as_system)


class ShellCustomizer(_ScriptStep):
    """Runs a shell script (Linux): exactly one of scriptUri / inline."""

    missing_script_code = E.NO_CUSTOMIZER_SCRIPT
    kind = "Shell customizer"
    type: Literal["Shell"]


class PowerShellCustomizer(_PowerShellStep):
    """Runs PowerShell (Windows): exactly one of scriptUri / inline; runAsSystem needs runElevated."""

    missing_script_code = E.NO_CUSTOMIZER_SCRIPT
    kind = "PowerShell customizer"
    type: Literal["PowerShell"]


def _check_elevation(run_elevated: bool | None, run_as_system: bool | None) -> list[Issue]:
    if run_as_system and not run_elevated:
        return [
            Issue(
                E.INVALID_PARAMETER,
                "'runAsSystem' can only be true when 'runElevated' is true: set runElevated to true.",
                "runAsSystem",
            )
        ]
    return []


class WindowsRestartCustomizer(_Step):
    """Reboots the Windows build VM and waits for it."""

    type: Literal["WindowsRestart"]
    restart_command: str | None = None
    restart_check_command: str | None = None
    restart_timeout: str | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> WindowsRestartCustomizer:
        if _stored(info):
            return self
        if self.restart_timeout and not _GO_DURATION.match(self.restart_timeout):
            _raise(
                [
                    Issue(
                        E.INVALID_PARAMETER,
                        "'restartTimeout' must be a duration such as '5m' or '2h', "
                        f"got {_q(self.restart_timeout)}.",
                        "restartTimeout",
                    )
                ]
            )
        return self


class WindowsUpdateCustomizer(_Step):
    """Installs Windows updates."""

    type: Literal["WindowsUpdate"]
    search_criteria: str | None = None
    filters: list[str] | None = None
    update_limit: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None


class FileCustomizer(_Step):
    """Copies one file (sourceUri) to an absolute destination path in the image."""

    type: Literal["File"]
    source_uri: str | None = None
    sha256_checksum: Sha256 | None = None
    destination: str | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> FileCustomizer:
        if _stored(info):
            return self
        _raise(_check_file(self.source_uri, self.destination, E.NO_CUSTOMIZER_SCRIPT, "File customizer"))
        return self


def _check_file(
    source_uri: str | None, destination: str | None, no_script_code: str, kind: str
) -> list[Issue]:
    issues: list[Issue] = []
    if not source_uri:
        issues.append(
            Issue(no_script_code, f"A {kind} needs 'sourceUri': the URI of the file to copy.", "sourceUri")
        )
    else:
        issues += _check_uri(source_uri, "sourceUri")
    if destination is None:
        issues.append(
            Issue(
                E.MISSING_REQUIRED_PROPERTY,
                f"A {kind} needs 'destination': the absolute path of the file in the image.",
                "destination",
            )
        )
    else:
        issues += _check_destination(destination)
    return issues


ImageTemplateCustomizer = Annotated[
    Annotated[ShellCustomizer, Tag("Shell")]
    | Annotated[PowerShellCustomizer, Tag("PowerShell")]
    | Annotated[WindowsRestartCustomizer, Tag("WindowsRestart")]
    | Annotated[WindowsUpdateCustomizer, Tag("WindowsUpdate")]
    | Annotated[FileCustomizer, Tag("File")],
    Discriminator(tag_of("type")),
]
Customizer = (
    ShellCustomizer
    | PowerShellCustomizer
    | WindowsRestartCustomizer
    | WindowsUpdateCustomizer
    | FileCustomizer
)
CUSTOMIZER_TYPES = ("Shell", "PowerShell", "WindowsRestart", "WindowsUpdate", "File")

# ------------------------------------------------------------------------------------------- validators


class ShellValidator(_ScriptStep):
    """Runs a shell script on the image during validation (Linux)."""

    missing_script_code = E.NO_VALIDATOR_SCRIPT
    kind = "Shell validator"
    type: Literal["Shell"]


class PowerShellValidator(_PowerShellStep):
    """Runs PowerShell on the image during validation (Windows)."""

    missing_script_code = E.NO_VALIDATOR_SCRIPT
    kind = "PowerShell validator"
    type: Literal["PowerShell"]


class FileValidator(_Step):
    """Copies a file needed by later validators."""

    type: Literal["File"]
    source_uri: str | None = None
    sha256_checksum: Sha256 | None = None
    destination: str | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> FileValidator:
        if _stored(info):
            return self
        _raise(_check_file(self.source_uri, self.destination, E.NO_VALIDATOR_SCRIPT, "File validator"))
        return self


ImageTemplateInVMValidator = Annotated[
    Annotated[ShellValidator, Tag("Shell")]
    | Annotated[PowerShellValidator, Tag("PowerShell")]
    | Annotated[FileValidator, Tag("File")],
    Discriminator(tag_of("type")),
]
Validator = ShellValidator | PowerShellValidator | FileValidator
VALIDATOR_TYPES = ("Shell", "PowerShell", "File")

# ----------------------------------------------------------------------------------------- distributors

StorageAccountType = Literal["Standard_LRS", "Standard_ZRS", "Premium_LRS"]


class TargetRegion(ArmModel):
    """A region an image version is replicated to."""

    name: str
    replica_count: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    storage_account_type: StorageAccountType | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> TargetRegion:
        if _stored(info):
            return self
        _raise(_nonempty(self.name, "name", E.INVALID_PARAMETER))
        return self


class DistributeVersionerLatest(ArmModel):
    """New version = latest existing version (within `major`, -1 = any) with patch + 1."""

    scheme: Literal["Latest"]
    major: Annotated[int, Field(ge=-1, le=INT32_MAX)] | None = None


class DistributeVersionerSource(ArmModel):
    """New version = the source image's version."""

    scheme: Literal["Source"]


DistributeVersioner = Annotated[
    Annotated[DistributeVersionerLatest, Tag("Latest")] | Annotated[DistributeVersionerSource, Tag("Source")],
    Discriminator(tag_of("scheme")),
]


class _Distributor(ArmModel):
    run_output_name: str
    artifact_tags: Tags | None = None

    @field_validator("run_output_name")
    @classmethod
    def _name(cls, value: str, info: ValidationInfo) -> str:
        if not NAME_PATTERN.match(value) and not _stored(info):
            raise RuleViolation(
                [
                    Issue(
                        E.INVALID_PARAMETER,
                        "'runOutputName' must match ^[A-Za-z0-9-_.]{1,64}$ (letters, digits, '-', '_', '.'; "
                        f"at most 64), got {_q(value)}.",
                    )
                ]
            )
        return value


class ManagedImageDistributor(_Distributor):
    """Distribute as a managed image."""

    type: Literal["ManagedImage"]
    image_id: str
    location: str

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> ManagedImageDistributor:
        if _stored(info):
            return self
        _raise(
            _nonempty(self.image_id, "imageId", E.INVALID_PARAMETER)
            + _nonempty(self.location, "location", E.INVALID_PARAMETER)
        )
        return self


class SharedImageDistributor(_Distributor):
    """Distribute to an Azure Compute Gallery image (definition id, or a version id to pin the version).

    Deprecated `replicationRegions` (+ `storageAccountType`) are kept as given; `effective_target_regions`
    is the normalized view (each region once, replicaCount 1, that storage account type).
    """

    type: Literal["SharedImage"]
    gallery_image_id: str
    replication_regions: list[str] | None = None
    exclude_from_latest: bool | None = None
    storage_account_type: StorageAccountType | None = None
    target_regions: list[TargetRegion] | None = None
    versioning: DistributeVersioner | None = None
    replication_mode: Literal["Full", "Shallow"] | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> SharedImageDistributor:
        if _stored(info):
            return self
        issues: list[Issue] = []
        m = _GALLERY_IMAGE_ID.match(self.gallery_image_id)
        if not m:
            issues.append(
                Issue(
                    E.BAD_SHARED_IMAGE_DISTRIBUTE,
                    "'galleryImageId' must be the resource id of a gallery image definition "
                    "(/subscriptions/…/providers/Microsoft.Compute/galleries/<g>/images/<i>), optionally "
                    f"followed by /versions/<x.y.z>; got {_q(self.gallery_image_id)}.",
                    "galleryImageId",
                )
            )
        elif m.group("version") is not None and not is_gallery_version(m.group("version")):
            issues.append(
                Issue(
                    E.BAD_SHARED_IMAGE_DISTRIBUTE,
                    "The version in 'galleryImageId' must be <major>.<minor>.<patch> (integers, e.g. 1.0.0), "
                    f"got {_q(m.group('version'))}.",
                    "galleryImageId",
                )
            )
        elif m.group("version") is not None and self.versioning is not None:
            issues.append(
                Issue(
                    E.BAD_SHARED_IMAGE_DISTRIBUTE,
                    "Give the version either in 'galleryImageId' (…/versions/x.y.z) or with 'versioning', "
                    "not both.",
                    "versioning",
                )
            )
        if self.target_regions is not None and self.replication_regions is not None:
            issues.append(
                Issue(
                    E.BAD_SHARED_IMAGE_DISTRIBUTE,
                    "'targetRegions' and the deprecated 'replicationRegions' cannot both be given: "
                    "use targetRegions only.",
                    "replicationRegions",
                )
            )
        if self.storage_account_type is not None and self.replication_regions is None:
            issues.append(
                Issue(
                    E.BAD_SHARED_IMAGE_DISTRIBUTE,
                    "The deprecated 'storageAccountType' can only be given with 'replicationRegions': "
                    "use targetRegions[].storageAccountType instead.",
                    "storageAccountType",
                )
            )
        names = [r.lower().replace(" ", "") for r in self.replication_regions or []]
        names += [t.name.lower().replace(" ", "") for t in self.target_regions or []]
        seen: set[str] = set()
        for n in names:
            if n in seen:
                field = "targetRegions" if self.target_regions is not None else "replicationRegions"
                issues.append(Issue(E.BAD_SHARED_IMAGE_DISTRIBUTE, f"Region {_q(n)} is listed twice.", field))
                break
            seen.add(n)
        _raise(issues)
        return self

    @property
    def gallery_image_definition_id(self) -> str:
        """`galleryImageId` without any `/versions/x` suffix."""
        m = _GALLERY_IMAGE_ID.match(self.gallery_image_id)
        return m.group("image") if m else self.gallery_image_id

    @property
    def pinned_version(self) -> str | None:
        """The version given in `galleryImageId` (…/versions/1.2.3), if any."""
        m = _GALLERY_IMAGE_ID.match(self.gallery_image_id)
        return m.group("version") if m else None

    def effective_target_regions(self, default_location: str) -> list[TargetRegion]:
        """targetRegions, or the deprecated replicationRegions normalized, or the template's location."""
        if self.target_regions:
            return list(self.target_regions)
        if self.replication_regions:
            return [
                TargetRegion(
                    name=r, replica_count=1, storage_account_type=self.storage_account_type or "Standard_LRS"
                )
                for r in self.replication_regions
            ]
        return [TargetRegion(name=default_location, replica_count=1, storage_account_type="Standard_LRS")]


class VhdDistributor(_Distributor):
    """Distribute as a VHD blob (at `uri`, or in the staging storage account)."""

    type: Literal["VHD"]
    uri: str | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> VhdDistributor:
        if _stored(info):
            return self
        if self.uri:
            _raise(_check_uri(self.uri, "uri"))
        return self


ImageTemplateDistributor = Annotated[
    Annotated[ManagedImageDistributor, Tag("ManagedImage")]
    | Annotated[SharedImageDistributor, Tag("SharedImage")]
    | Annotated[VhdDistributor, Tag("VHD")],
    Discriminator(tag_of("type")),
]
Distributor = ManagedImageDistributor | SharedImageDistributor | VhdDistributor
DISTRIBUTOR_TYPES = ("ManagedImage", "SharedImage", "VHD")

# ------------------------------------------------------------------------------------ other properties


class VirtualNetworkConfig(ArmModel):
    """Subnet of the build VM; containerInstanceSubnetId for isolated builds (then no proxy VM).

    2019-05-01-preview named the subnet with `name` (the virtual network), `subnetName` and
    `resourceGroupName`; those are accepted for that api-version only, see `effective_subnet_id`.
    """

    subnet_id: str | None = None
    container_instance_subnet_id: str | None = None
    proxy_vm_size: str | None = None
    name: str | None = None
    subnet_name: str | None = None
    resource_group_name: str | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> VirtualNetworkConfig:
        if _stored(info):
            return self
        issues: list[Issue] = []
        legacy = {
            "name": self.name,
            "subnetName": self.subnet_name,
            "resourceGroupName": self.resource_group_name,
        }
        given = [k for k, v in legacy.items() if v is not None]
        api_version = _api_version(info)
        if given and api_version is not None and api_version >= IDENTITY_REQUIRED_SINCE:
            issues.append(
                Issue(
                    E.INVALID_PARAMETER,
                    f"'{given[0]}' was replaced by 'subnetId' in api-version 2020-02-14: give the subnet's "
                    "resource id in 'subnetId'.",
                    given[0],
                )
            )
        elif given and (len(given) != len(legacy) or self.subnet_id):
            issues.append(
                Issue(
                    E.INVALID_PARAMETER,
                    "The legacy vnetConfig needs all of 'name', 'subnetName' and 'resourceGroupName' and no "
                    "'subnetId'.",
                    given[0],
                )
            )
        if self.container_instance_subnet_id and not self.subnet_id:
            issues.append(
                Issue(
                    E.INVALID_PARAMETER,
                    "'containerInstanceSubnetId' may only be given together with 'subnetId' (on the same "
                    "virtual network).",
                    "containerInstanceSubnetId",
                )
            )
        if self.proxy_vm_size and self.container_instance_subnet_id:
            issues.append(
                Issue(
                    E.INVALID_PARAMETER,
                    "'proxyVmSize' must not be given with 'containerInstanceSubnetId': no proxy VM is "
                    "deployed for isolated builds.",
                    "proxyVmSize",
                )
            )
        elif self.proxy_vm_size and not self.subnet_id:
            issues.append(
                Issue(
                    E.INVALID_PARAMETER,
                    "'proxyVmSize' only applies with 'subnetId' (the proxy passes traffic into that subnet).",
                    "proxyVmSize",
                )
            )
        _raise(issues)
        return self

    def effective_subnet_id(self, subscription_id: str) -> str | None:
        """subnetId, or the legacy (2019-05-01-preview) name/subnetName/resourceGroupName as a subnet id."""
        if self.subnet_id:
            return self.subnet_id
        if self.name and self.subnet_name and self.resource_group_name:
            return (
                f"/subscriptions/{subscription_id}/resourceGroups/{self.resource_group_name}/providers"
                f"/Microsoft.Network/virtualNetworks/{self.name}/subnets/{self.subnet_name}"
            )
        return None


class ImageTemplateVmProfile(ArmModel):
    """The build/validation VM: size, OS disk size, extra identities, network."""

    vm_size: str | None = None
    os_disk_size_gb: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = Field(
        default=None, alias="osDiskSizeGB"
    )
    user_assigned_identities: list[str] | None = None
    vnet_config: VirtualNetworkConfig | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> ImageTemplateVmProfile:
        if _stored(info):
            return self
        issues = [
            Issue(
                E.INVALID_PARAMETER,
                f"Expected the resource id of a user-assigned managed identity, got {_q(i)}.",
                f"userAssignedIdentities[{n}]",
            )
            for n, i in enumerate(self.user_assigned_identities or [])
            if not _MSI_ID.match(i)
        ]
        _raise(issues)
        return self


class OptimizeVmBoot(ArmModel):
    state: Literal["Enabled", "Disabled"] | None = None


class OptimizeWorkload(ArmModel):
    state: Literal["Enabled", "Disabled"] | None = None
    script_uri: str | None = None
    sha256_checksum: Sha256 | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> OptimizeWorkload:
        if _stored(info):
            return self
        _raise(_check_uri(self.script_uri, "scriptUri"))
        return self


class ImageTemplateOptimize(ArmModel):
    """Optimizations applied to the image (faster VM boot, workload script)."""

    vm_boot: OptimizeVmBoot | None = None
    workload: OptimizeWorkload | None = None


class ImageTemplateValidate(ArmModel):
    """In-VM validation of the result (or of the source only)."""

    continue_distribute_on_failure: bool | None = None
    source_validation_only: bool | None = None
    in_vm_validations: list[ImageTemplateInVMValidator] | None = Field(default=None, alias="inVMValidations")


OnBuildError = Literal["cleanup", "abort"]


class ImageTemplateErrorHandling(ArmModel):
    """What happens to the build VM when a customizer / validator fails (cleanup is the default)."""

    on_customizer_error: OnBuildError | None = None
    on_validation_error: OnBuildError | None = None


class ImageTemplateAutoRun(ArmModel):
    """Build automatically on create/update."""

    state: Literal["Enabled", "Disabled"] | None = None


class DataDisk(ArmModel):
    """An extra data disk added to the image."""

    size_gb: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = Field(default=None, alias="sizeGB")


class ImageTemplateProperties(ArmModel):
    """`properties` of an image template (read-only fields are not modelled: they are server-side state)."""

    read_only = ("provisioningState", "provisioningError", "lastRunStatus", "exactStagingResourceGroup")

    source: ImageTemplateSource
    customize: list[ImageTemplateCustomizer] | None = None
    optimize: ImageTemplateOptimize | None = None
    validate_: ImageTemplateValidate | None = Field(default=None, alias="validate")
    distribute: list[ImageTemplateDistributor]
    error_handling: ImageTemplateErrorHandling | None = None
    build_timeout_in_minutes: Annotated[int, Field(ge=0, le=MAX_BUILD_TIMEOUT_MINUTES)] | None = None
    vm_profile: ImageTemplateVmProfile | None = None
    additional_data_disks: list[DataDisk] | None = None
    staging_resource_group: str | None = None
    auto_run: ImageTemplateAutoRun | None = None
    managed_resource_tags: Tags | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> ImageTemplateProperties:
        if _stored(info):
            return self
        issues: list[Issue] = []
        if not self.distribute:
            issues.append(
                Issue(
                    E.INVALID_PARAMETER,
                    "'distribute' must list at least one target (ManagedImage, SharedImage or VHD).",
                    "distribute",
                )
            )
        seen: dict[str, int] = {}
        for i, d in enumerate(self.distribute):
            key = d.run_output_name.lower()
            if key in seen:
                issues.append(
                    Issue(
                        E.INVALID_PARAMETER,
                        f"runOutputName {_q(d.run_output_name)} is used by distribute[{seen[key]}] too: "
                        "every distribute target needs its own runOutputName.",
                        f"distribute[{i}].runOutputName",
                    )
                )
            else:
                seen[key] = i
        issues += self._step_limits()
        timeout = self.build_timeout_in_minutes
        if timeout is not None and 0 < timeout < MIN_BUILD_TIMEOUT_MINUTES:
            issues.append(
                Issue(
                    E.INVALID_PARAMETER,
                    f"'buildTimeoutInMinutes' must be 0 (the default, 240 minutes) or between "
                    f"{MIN_BUILD_TIMEOUT_MINUTES} and {MAX_BUILD_TIMEOUT_MINUTES}, got {timeout}.",
                    "buildTimeoutInMinutes",
                )
            )
        if self.staging_resource_group and not _RG_ID.match(self.staging_resource_group):
            issues.append(
                Issue(
                    E.BAD_STAGING_RESOURCE_GROUP,
                    "'stagingResourceGroup' must be a resource group id "
                    f"(/subscriptions/<id>/resourceGroups/<name>), got {_q(self.staging_resource_group)}.",
                    "stagingResourceGroup",
                )
            )
        _raise(issues)
        return self

    def _step_limits(self) -> list[Issue]:
        """The supported maximum of steps, and of steps x template size (what a run's history holds)."""
        customize = len(self.customize or [])
        validators = len(self.validate_.in_vm_validations or []) if self.validate_ else 0
        issues: list[Issue] = []
        for count, limit, target in (
            (customize, MAX_CUSTOMIZERS, "customize"),
            (validators, MAX_VALIDATORS, "validate.inVMValidations"),
        ):
            if count > limit:
                issues.append(
                    Issue(
                        E.INVALID_PARAMETER,
                        f"'{target}' lists {count} steps; at most {limit} are supported. Merge small "
                        "steps into one script (a Shell step takes many inline lines).",
                        target,
                    )
                )
        if issues:
            return issues
        size = len(self.model_dump_json(by_alias=True, exclude_none=True))
        calls = customize + validators + len(self.distribute) + 8  # + prepare, env, capture, cleanup...
        if size * calls > MAX_HISTORY_BYTES:
            issues.append(
                Issue(
                    E.INVALID_PARAMETER,
                    f"The template is {size} bytes and runs {calls} steps; each step carries the template, "
                    f"so a run would keep {size * calls // (1024 * 1024)} MiB of step inputs (limit "
                    f"{MAX_HISTORY_BYTES // (1024 * 1024)} MiB). Move large inline scripts to scriptUri "
                    "or use fewer steps.",
                    "customize",
                )
            )
        return issues

    @property
    def effective_build_timeout_minutes(self) -> int:
        """buildTimeoutInMinutes, where omitted or 0 means the default of 240 (4 hours)."""
        return self.build_timeout_in_minutes or DEFAULT_BUILD_TIMEOUT_MINUTES

    @property
    def customizers(self) -> list[Customizer]:
        """`customize`, or [] when omitted."""
        return list(self.customize or [])

    @property
    def validators(self) -> list[Validator]:
        """`validate.inVMValidations`, or [] when omitted."""
        return list(self.validate_.in_vm_validations or []) if self.validate_ else []

    def artifacts(self) -> list[ArtifactRef]:
        """Every file a build fetches (scriptUri / sourceUri), in order, with its JSON path and checksum
        (`artifacts_of`, the one list every provider uses)."""
        return artifacts_of(self.model_dump(by_alias=True, exclude_none=True))


class ArtifactRef(NamedTuple):
    """A file to fetch before the build: where the template names it, its URI, its expected SHA-256."""

    target: str
    uri: str
    sha256: str | None


_FETCHED_BY_TYPE = {"Shell": "scriptUri", "PowerShell": "scriptUri", "File": "sourceUri"}


def artifacts_of(properties: Any) -> list[ArtifactRef]:
    """Every file a build fetches, from a template's `properties` as JSON (validated by the model or
    not: providers take URI schemes the ARM model refuses, e.g. the local provider's file://):
    Shell/PowerShell scriptUri and File sourceUri of customize and validate.inVMValidations, then
    optimize.workload.scriptUri, in template order, each with its JSON path and expected SHA-256."""
    props = properties if isinstance(properties, dict) else {}
    found: list[ArtifactRef] = []
    validate = props.get("validate") if isinstance(props.get("validate"), dict) else {}
    lists = [("properties.customize", props.get("customize")),
             ("properties.validate.inVMValidations", (validate or {}).get("inVMValidations"))]  # fmt: skip
    for base, items in lists:
        for i, step in enumerate(items if isinstance(items, list) else []):
            if not isinstance(step, dict):
                continue
            key = {"Shell": "scriptUri", "PowerShell": "scriptUri", "File": "sourceUri"}.get(
                str(step.get("type"))
            )
            uri = step.get(key) if key else None
            if isinstance(uri, str) and uri:
                found.append(ArtifactRef(f"{base}[{i}].{key}", uri, step.get("sha256Checksum") or None))
    optimize = props.get("optimize") if isinstance(props.get("optimize"), dict) else {}
    workload = (optimize or {}).get("workload")
    if isinstance(workload, dict) and isinstance(workload.get("scriptUri"), str) and workload["scriptUri"]:
        found.append(
            ArtifactRef(
                "properties.optimize.workload.scriptUri",
                workload["scriptUri"],
                workload.get("sha256Checksum") or None,
            )
        )
    return found


class UserAssignedIdentity(ArmModel):
    """Value of a userAssignedIdentities entry: `{}` in requests (principalId/clientId are read-only)."""

    read_only = ("principalId", "clientId")


class ImageTemplateIdentity(ArmModel):
    """The template's identity: UserAssigned with exactly one identity, or None (removes it)."""

    read_only = ("principalId", "tenantId")

    type: Literal["UserAssigned", "None"]
    user_assigned_identities: dict[str, UserAssignedIdentity] | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> ImageTemplateIdentity:
        if _stored(info):
            return self
        ids = self.user_assigned_identities or {}
        issues: list[Issue] = []
        if self.type == "UserAssigned":
            if len(ids) != 1:
                issues.append(
                    Issue(
                        E.INVALID_PARAMETER,
                        f"Image Builder supports exactly one user-assigned identity, got {len(ids)}: "
                        "list one identity resource id in 'userAssignedIdentities'.",
                        "userAssignedIdentities",
                    )
                )
            for key in ids:
                if not _MSI_ID.match(key):
                    issues.append(
                        Issue(
                            E.INVALID_PARAMETER,
                            f"Expected the resource id of a user-assigned managed identity, got {_q(key)}.",
                            "userAssignedIdentities",
                        )
                    )
        elif ids:
            issues.append(
                Issue(
                    E.INVALID_PARAMETER,
                    "Identity type 'None' takes no 'userAssignedIdentities'.",
                    "userAssignedIdentities",
                )
            )
        _raise(issues)
        return self


class ImageTemplate(ArmModel):
    """An image template as the user gave it (PUT body, read-only fields dropped)."""

    # ARM template-language members too: `az resource create --is-full-object` sends the resource as
    # written in a deployment template (AIB's quickstarts do this).
    read_only = (*RESOURCE_READ_ONLY, "apiVersion", "dependsOn", "comments")

    location: str
    tags: Tags | None = None
    identity: ImageTemplateIdentity | None = None
    properties: ImageTemplateProperties

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> ImageTemplate:
        if _stored(info):
            return self
        issues = _nonempty(self.location, "location", E.LOCATION_REQUIRED)
        api_version = _api_version(info)
        if self.identity is None and api_version is not None and api_version >= IDENTITY_REQUIRED_SINCE:
            issues.append(
                Issue(
                    E.MISSING_REQUIRED_PROPERTY,
                    "'identity' is required: give a user-assigned managed identity "
                    '({"type": "UserAssigned", "userAssignedIdentities": {"<identity resource id>": {}}}).',
                    "identity",
                )
            )
        _raise(issues)
        return self

    def to_arm(self) -> dict[str, Any]:
        """The body as ARM returns it, without read-only fields (id, name, type, state are the API's)."""
        return self.to_json()


# ------------------------------------------------------------------------------------------- PATCH body


class ImageTemplateUpdateProperties(ArmModel):
    """The only template properties PATCH may change."""

    read_only = ImageTemplateProperties.read_only

    distribute: list[ImageTemplateDistributor] | None = None
    vm_profile: ImageTemplateVmProfile | None = None


class ImageTemplateUpdate(ArmModel):
    """A PATCH body: tags, identity, properties.vmProfile, properties.distribute."""

    read_only = RESOURCE_READ_ONLY

    identity: ImageTemplateIdentity | None = None
    tags: Tags | None = None
    properties: ImageTemplateUpdateProperties | None = None


# --------------------------------------------------------------------------------------------- triggers

_TIME_ZONE = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$")


def _check_ncrontab(expr: str) -> list[Issue]:
    try:
        CronSchedule.parse(expr)
    except ScheduleError as exc:
        problem = str(exc)
        return [
            Issue(
                E.INVALID_PARAMETER,
                "'schedule' must be an NCRONTAB expression of 6 fields "
                "({second} {minute} {hour} {day} {month} {day-of-week}), e.g. '0 0 3 * * *': "
                f"{problem}.",
                "schedule",
            )
        ]
    return []


class SourceImageTriggerProperties(ArmModel):
    """AIB's trigger: build when a new version of the (latest) source image appears."""

    read_only = ("status", "provisioningState")

    kind: Literal["SourceImage"]


class ScheduleTriggerProperties(ArmModel):
    """Our extension: build on an NCRONTAB schedule, optionally only when the inputs changed and/or only
    when the last image has security updates pending (Debian: its packages against the security suite)."""

    read_only = ("status", "provisioningState")

    kind: Literal["Schedule"]
    schedule: str
    time_zone: str | None = None
    only_when_inputs_changed: bool | None = None
    only_when_security_updates_pending: bool | None = None

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> ScheduleTriggerProperties:
        if _stored(info):
            return self
        issues = _check_ncrontab(self.schedule)
        if self.time_zone is not None and not _TIME_ZONE.match(self.time_zone):
            issues.append(
                Issue(
                    E.INVALID_PARAMETER,
                    "'timeZone' must be an IANA time zone name such as 'UTC' or 'Europe/Paris', "
                    f"got {_q(self.time_zone)}.",
                    "timeZone",
                )
            )
        _raise(issues)
        return self


TriggerProperties = Annotated[
    Annotated[SourceImageTriggerProperties, Tag("SourceImage")]
    | Annotated[ScheduleTriggerProperties, Tag("Schedule")],
    Discriminator(tag_of("kind")),
]
TRIGGER_KINDS = ("SourceImage", "Schedule")


class TriggerResource(ArmModel):
    """A trigger PUT body (read-only status/provisioningState dropped)."""

    # AIB's trigger quickstart sends a `location`; triggers are proxy resources, so it means nothing.
    read_only = (*RESOURCE_READ_ONLY, "location")

    properties: TriggerProperties

    def to_arm(self) -> dict[str, Any]:
        return self.to_json()


# ----------------------------------------------------------------------------- response-only models

ProvisioningState = Literal["Creating", "Updating", "Succeeded", "Failed", "Deleting", "Canceled"]
RunState = Literal["Running", "Canceling", "Succeeded", "PartiallySucceeded", "Failed", "Canceled"]
RunSubState = Literal["Queued", "Building", "Customizing", "Optimizing", "Validating", "Distributing"]
ProvisioningErrorCode = Literal[
    "BadSourceType",
    "BadPIRSource",
    "BadManagedImageSource",
    "BadSharedImageVersionSource",
    "BadCustomizerType",
    "UnsupportedCustomizerType",
    "NoCustomizerScript",
    "BadValidatorType",
    "UnsupportedValidatorType",
    "NoValidatorScript",
    "BadDistributeType",
    "BadSharedImageDistribute",
    "BadStagingResourceGroup",
    "ServerError",
    "Other",
]


class _Response(ArmModel):
    model_config = ConfigDict(strict=False, extra="ignore")


class ImageTemplateLastRunStatus(_Response):
    """`properties.lastRunStatus`: state of the run in progress or the last one."""

    start_time: str | None = None
    end_time: str | None = None
    run_state: RunState | None = None
    run_sub_state: RunSubState | None = None
    message: str | None = None


class ProvisioningError(_Response):
    """`properties.provisioningError`."""

    provisioning_error_code: str | None = None
    message: str | None = None


class RunOutputProperties(_Response):
    """What a distribute target produced."""

    artifact_id: str | None = None
    artifact_uri: str | None = None
    provisioning_state: ProvisioningState | None = None


class RunOutput(_Response):
    """A run output resource (GET …/runOutputs/{name})."""

    id: str | None = None
    name: str | None = None
    type: str | None = "Microsoft.VirtualMachineImages/imageTemplates/runOutputs"
    properties: RunOutputProperties | None = None


class TriggerStatus(_Response):
    """`properties.status` of a trigger."""

    code: str | None = None
    message: str | None = None
    time: str | None = None
