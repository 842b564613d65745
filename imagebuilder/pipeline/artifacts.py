"""The list of files a build fetches (every scriptUri / sourceUri of customize, inVMValidations and
optimize.workload, with its JSON path and expected SHA-256), computed in one place for every provider,
the probes and the triggers (pure: `imagebuilder.template.models.artifacts_of`, which the template
model's `artifacts()` uses too)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imagebuilder.template.models import ArtifactRef, artifacts_of

__all__ = ["ArtifactRef", "build_artifacts"]


def build_artifacts(resource: Mapping[str, Any]) -> list[ArtifactRef]:
    """The artifacts of a template resource as stored (ARM JSON), in template order (duplicates kept:
    each names its own field)."""
    return artifacts_of(resource.get("properties"))
