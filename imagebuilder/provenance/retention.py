"""Retention of gallery image versions (pure): which versions a policy removes.

A policy is `keepLast` (N, at least 1) and/or `maxAgeDays` (D). The N highest versions are always kept;
of the others, a version goes when it is older than D days (with D set) or always (with only N set).
Never removed, whatever the policy says: the version `latest` resolves to (the highest one not excluded
from latest) and any version a template names as its source (`protected`).

Where a policy comes from: a template's tags `retention.keepLast` / `retention.maxAgeDays` (applied to
every gallery image definition the template distributes to), or the `retention` object of a local
gallery image definition (`{"keepLast": 3, "maxAgeDays": 30}`). With both, the template's wins.

Exceptions::

    ValueError
    └── PolicyError    a policy value that is not a positive number (names the field)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

TAG_KEEP_LAST = "retention.keepLast"
TAG_MAX_AGE_DAYS = "retention.maxAgeDays"


class PolicyError(ValueError):
    """A retention setting that cannot be applied."""


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int | None = None
    max_age_days: float | None = None

    @property
    def empty(self) -> bool:
        return self.keep_last is None and self.max_age_days is None

    def describe(self) -> str:
        parts = []
        if self.keep_last is not None:
            parts.append(f"keep the last {self.keep_last}")
        if self.max_age_days is not None:
            parts.append(f"delete older than {self.max_age_days:g} days")
        return ", ".join(parts) or "keep everything"


def _number(value: Any, field: str, *, integer: bool) -> float | int | None:
    if value is None or value == "":
        return None
    try:
        number = int(str(value)) if integer else float(str(value))
    except ValueError:
        raise PolicyError(
            f"{field} is {value!r}, not a {'whole ' if integer else ''}number; "
            f"write e.g. {'3' if integer else '30'}"
        ) from None
    if number <= 0 or number != number:
        raise PolicyError(f"{field} is {value!r}; it must be positive")
    return number


def policy_from(settings: Mapping[str, Any], *, keep_key: str, age_key: str, where: str) -> RetentionPolicy:
    keep = _number(settings.get(keep_key), f"{where}{keep_key}", integer=True)
    age = _number(settings.get(age_key), f"{where}{age_key}", integer=False)
    return RetentionPolicy(None if keep is None else int(keep), None if age is None else float(age))


def policy_from_tags(tags: Mapping[str, Any]) -> RetentionPolicy:
    """A template's policy from its tags (case-insensitive keys, as ARM tags)."""
    lower = {str(k).lower(): v for k, v in tags.items()}
    keep = lower.get(TAG_KEEP_LAST.lower())
    age = lower.get(TAG_MAX_AGE_DAYS.lower())
    return policy_from(
        {TAG_KEEP_LAST: keep, TAG_MAX_AGE_DAYS: age},
        keep_key=TAG_KEEP_LAST,
        age_key=TAG_MAX_AGE_DAYS,
        where="tags.",
    )


@dataclass(frozen=True)
class VersionInfo:
    """One version of an image definition as retention sees it."""

    name: str
    published: datetime | None
    exclude_from_latest: bool = False
    ready: bool = True


@dataclass(frozen=True)
class Removal:
    version: str
    reason: str


@dataclass(frozen=True)
class RemovedVersion:
    """One version a provider removed (or, in a dry run, would remove)."""

    version_id: str
    image_id: str
    version: str
    reason: str
    policy_from: str


@dataclass
class RetentionReport:
    """What one retention pass of a provider did; errors are reported, never raised."""

    dry_run: bool
    removed: list[RemovedVersion] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _key(name: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in name.split("."))
    except ValueError:
        return (-1,)


def latest_of(versions: Iterable[VersionInfo]) -> str | None:
    """The version `latest` resolves to: the highest ready one not excluded from latest."""
    candidates = [v.name for v in versions if v.ready and not v.exclude_from_latest]
    return max(candidates, key=_key) if candidates else None


def plan_removals(
    versions: Iterable[VersionInfo],
    policy: RetentionPolicy,
    *,
    now: datetime,
    protected: Iterable[str] = (),
) -> list[Removal]:
    """The versions `policy` removes, highest first."""
    items = sorted(versions, key=lambda v: _key(v.name), reverse=True)
    if policy.empty:
        return []
    keep = set(protected)
    latest = latest_of(items)
    if latest is not None:
        keep.add(latest)
    kept_by_count = {v.name for v in items[: policy.keep_last]} if policy.keep_last is not None else set()
    cutoff = now - timedelta(days=policy.max_age_days) if policy.max_age_days is not None else None
    out = []
    for v in items:
        if v.name in keep or v.name in kept_by_count:
            continue
        if cutoff is not None:
            if v.published is None or v.published >= cutoff:
                continue
            out.append(Removal(v.name, f"older than {policy.max_age_days:g} days ({policy.describe()})"))
        else:
            out.append(Removal(v.name, f"not among the last {policy.keep_last} ({policy.describe()})"))
    return out


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _definition_of(gallery_id: str) -> tuple[str, str | None]:
    """(image definition id lower-cased, version or None) of a gallery image [version] id."""
    text = gallery_id.strip().rstrip("/")
    head, sep, version = text.rpartition("/versions/")
    if sep:
        return head.lower(), version
    return text.lower(), None


@dataclass
class TemplatePolicies:
    """What the templates say: policies per image definition, versions they use as source, and errors."""

    policies: dict[str, tuple[RetentionPolicy, str]]
    protected: dict[str, set[str]]
    errors: list[str]


def policies_from_templates(templates: Iterable[tuple[str, Mapping[str, Any]]]) -> TemplatePolicies:
    """From (template name, ARM resource) pairs: each template's tag policy applied to the image
    definitions of its SharedImage targets (the first template naming a definition wins), and the
    exact versions templates use as a SharedImageVersion source (never removed)."""
    out = TemplatePolicies({}, {}, [])
    for name, resource in templates:
        props = _mapping(resource.get("properties"))
        source = _mapping(props.get("source"))
        if str(source.get("type", "")).lower() == "sharedimageversion":
            definition, version = _definition_of(str(source.get("imageVersionId") or ""))
            if version and version.lower() != "latest":
                out.protected.setdefault(definition, set()).add(version)
        try:
            policy = policy_from_tags(_mapping(resource.get("tags")))
        except PolicyError as exc:
            out.errors.append(f"image template {name!r}: {exc}")
            continue
        if policy.empty:
            continue
        for target in props.get("distribute") or []:
            if not isinstance(target, Mapping) or str(target.get("type", "")).lower() != "sharedimage":
                continue
            definition, _ = _definition_of(str(target.get("galleryImageId") or ""))
            if definition and definition not in out.policies:
                out.policies[definition] = (policy, f"image template {name}")
    return out
