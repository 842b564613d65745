"""The list of files a build fetches (every scriptUri / sourceUri of customize, inVMValidations and
optimize.workload, with its JSON path and expected SHA-256), computed in one place for every provider,
the probes and the triggers (pure: `imagebuilder.template.models.artifacts_of`, which the template
model's `artifacts()` uses too). Providers pass the frozen template model; triggers, probes and resume
plans, which hold a template as stored, pass that JSON: both go through the same walk."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imagebuilder.template.models import ArtifactRef, ImageTemplate, artifacts_of

__all__ = ["ArtifactRef", "build_artifacts"]


def build_artifacts(template: ImageTemplate | Mapping[str, Any]) -> list[ArtifactRef]:
    """The artifacts of a template (the model, or the resource as stored: ARM JSON), in template order
    (duplicates kept: each names its own field)."""
    if isinstance(template, ImageTemplate):
        return template.properties.artifacts()
    return artifacts_of(template.get("properties"))
