"""Input fingerprints of runs and templates (pure): what `onlyWhenInputsChanged` and a replaced artifact
compare. A past run's fingerprint comes from its template snapshot plus what its `prepare` step recorded
(`details.source.exact_version`, `details.artifacts[].sha256`); the current one from a fresh probe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from imagebuilder.pipeline.artifacts import build_artifacts
from imagebuilder.template import ImageTemplate, TemplateError, input_fingerprint


def template_of(resource: Mapping[str, Any]) -> ImageTemplate:
    """The model of a stored template resource (read-only members are ignored by the model)."""
    return ImageTemplate.model_validate(dict(resource))


@dataclass(frozen=True)
class RunInputs:
    """What a run was built from: the source's exact version, every artifact's SHA-256, and the hash."""

    source_exact_version: str | None
    artifacts: dict[str, str]
    fingerprint: str


def fingerprint_of(
    resource: Mapping[str, Any], source_exact_version: str | None, artifacts: Mapping[str, str]
) -> RunInputs:
    digest = input_fingerprint(template_of(resource), source_exact_version, artifacts)
    return RunInputs(source_exact_version, dict(artifacts), digest)


def recorded_inputs(snapshot: Mapping[str, Any], details: Mapping[str, Any]) -> RunInputs | None:
    """The inputs of a past run, or None when it never got through `prepare` (nothing recorded)."""
    source = details.get("source")
    if not isinstance(source, Mapping):
        return None
    shas: dict[str, str] = {}
    for item in details.get("artifacts") or []:
        if isinstance(item, Mapping) and item.get("uri") and item.get("sha256"):
            shas[str(item["uri"])] = str(item["sha256"])
    exact = source.get("exact_version")
    try:
        return fingerprint_of(snapshot, str(exact) if exact else None, shas)
    except (TemplateError, ValueError):
        return None


def source_version(details: Mapping[str, Any]) -> str | None:
    """The exact source version a run resolved (`latest` made exact), if it recorded one."""
    source = details.get("source")
    if not isinstance(source, Mapping):
        return None
    exact = source.get("exact_version") or source.get("id")
    return str(exact) if exact else None


def same_blob(uri: str, blob_url: str) -> bool:
    """True when `uri` (from a template, maybe with a SAS query) names the blob at `blob_url`."""
    a, b = urlsplit(uri), urlsplit(blob_url)
    return (
        (a.hostname or "").lower() == (b.hostname or "").lower()
        and a.port == b.port
        and a.path.rstrip("/") == b.path.rstrip("/")
    )


def uses_blob(resource: Mapping[str, Any], blob_url: str) -> list[str]:
    """JSON paths of the template's scriptUri/sourceUri entries that name `blob_url`."""
    try:
        refs: Iterable[Any] = build_artifacts(resource)
    except (TemplateError, ValueError):
        return []
    return [ref.target for ref in refs if same_blob(ref.uri, blob_url)]
