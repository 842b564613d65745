"""A run's SBOM and provenance statement from what the store keeps of it (pure): the run record's details
(`source` and `artifacts` from prepare, `capture.sha256` from capture), its template snapshot, its
outputs (ARM RunOutput resources) and the stored inventory.

Exceptions::

    ValueError
    └── NotRecordedError    the run recorded nothing to describe (no inventory, no captured image)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from imagebuilder.pipeline.fingerprint import recorded_inputs
from imagebuilder.provenance.sbom import (
    ArtifactRef,
    ImageRef,
    Inventory,
    SourceRef,
    cyclonedx_document,
    spdx_document,
)
from imagebuilder.provenance.slsa import Subject, statement

FORMATS = ("spdx", "cyclonedx")


class NotRecordedError(ValueError):
    """The run has nothing recorded to build the document from."""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def source_of(details: Mapping[str, Any]) -> SourceRef | None:
    src = details.get("source")
    if not isinstance(src, Mapping) or not src.get("id"):
        return None
    exact = src.get("exact_version")
    return SourceRef(
        type=str(src.get("type") or "Unknown"), id=str(src["id"]), version=str(exact) if exact else None
    )


def artifacts_of(details: Mapping[str, Any]) -> list[ArtifactRef]:
    out = []
    for item in details.get("artifacts") or []:
        if isinstance(item, Mapping) and item.get("uri") and item.get("sha256"):
            size = item.get("size")
            out.append(
                ArtifactRef(
                    uri=str(item["uri"]),
                    sha256=str(item["sha256"]),
                    size=size if isinstance(size, int) else None,
                )
            )
    return out


def image_sha256(details: Mapping[str, Any]) -> str | None:
    capture = details.get("capture")
    sha = capture.get("sha256") if isinstance(capture, Mapping) else None
    return str(sha) if sha else None


def output_sbom(
    inventory: Mapping[str, Any] | None,
    *,
    template_name: str,
    run_id: str,
    output: Mapping[str, Any],
    details: Mapping[str, Any],
    created: datetime,
    fmt: Literal["spdx", "cyclonedx"] = "spdx",
) -> dict[str, Any]:
    """The SBOM of one run output (`output`: an ARM RunOutput resource of the run)."""
    if not inventory:
        raise NotRecordedError(
            f"run {run_id} recorded no SBOM inventory (its capture did not finish, or it ran before SBOMs "
            "were recorded); run the template again"
        )
    inv = Inventory.model_validate(dict(inventory))
    props = _mapping(output.get("properties"))
    image = ImageRef(
        template_name=template_name,
        run_id=run_id,
        output_name=str(output.get("name") or ""),
        artifact_id=str(props.get("artifactId") or "") or None,
        sha256=image_sha256(details),
    )
    build = spdx_document if fmt == "spdx" else cyclonedx_document
    return build(
        inv, image=image, source=source_of(details), artifacts=artifacts_of(details), created=created
    )


def subjects_of(outputs: Sequence[Mapping[str, Any]], sha256: str) -> list[Subject]:
    """Every delivered artifact of the run (each region's managed image, gallery version or VHD)."""
    names: list[str] = []
    for output in outputs:
        props = _mapping(output.get("properties"))
        regions = props.get("regions")
        for region in regions if isinstance(regions, list) else []:
            if not isinstance(region, Mapping) or region.get("status") != "succeeded":
                continue
            for key in ("artifactId", "artifactUri"):
                value = region.get(key)
                if value and str(value) not in names:
                    names.append(str(value))
    return [Subject(name, sha256) for name in names]


def run_statement(
    *,
    template_id: str,
    run_id: str,
    snapshot: Mapping[str, Any],
    details: Mapping[str, Any],
    outputs: Sequence[Mapping[str, Any]],
    builder_id: str,
    started: datetime | None,
    finished: datetime | None,
) -> dict[str, Any]:
    """The in-toto statement of a run: its delivered artifacts, all with the captured disk's digest
    (every distribution is a verified byte copy of it)."""
    sha = image_sha256(details)
    if not sha:
        raise NotRecordedError(f"run {run_id} recorded no captured image (capture did not finish)")
    inputs = recorded_inputs(snapshot, details)
    subjects = subjects_of(outputs, sha) or [Subject(f"{template_id}/runs/{run_id}/capture", sha)]
    return statement(
        subjects=subjects,
        template_id=template_id,
        run_id=run_id,
        fingerprint=inputs.fingerprint if inputs else None,
        source=source_of(details),
        artifacts=artifacts_of(details),
        builder_id=builder_id,
        started=started,
        finished=finished,
    )
