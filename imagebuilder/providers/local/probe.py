"""Probing a template's inputs on this machine without building: the source `latest` resolves to (the
catalog or the local gallery) and the SHA-256 of every scriptUri/sourceUri, fetched into a throwaway
folder exactly as `prepare` fetches them. What triggers compare to decide whether to build.

Exceptions: those of `LocalProvider.prepare`'s parts (`CatalogError`, `GalleryError`, `ArtifactError`,
`TransientProviderError`), all `ProviderError`s naming the field.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagebuilder.pipeline.messages import BuildInput, RunRef, SourceInfo
from imagebuilder.providers.base import NullLog
from imagebuilder.providers.local import artifacts
from imagebuilder.providers.local.provider import LocalProvider

_PROBE_RUN = "probe"


@dataclass(frozen=True)
class ProbedInputs:
    """The resolved source and, if asked, every artifact's SHA-256 keyed like a run records it."""

    source: SourceInfo
    artifacts: dict[str, str] = field(default_factory=dict)


def probe_inputs(
    template: dict[str, Any], *, with_artifacts: bool, state_dir: Path | None = None
) -> ProbedInputs:
    """Resolve the source of `template` (an ARM resource) and, with `with_artifacts`, hash its files."""
    provider = LocalProvider(state_dir=state_dir)
    build = BuildInput(
        run=RunRef(subscription_id="probe", resource_group="probe", template_name="probe", run_id=_PROBE_RUN),
        template=template,
    )
    source = provider._resolve_source(build)
    shas: dict[str, str] = {}
    if with_artifacts:
        refs = artifacts.collect(template)
        if refs:
            with tempfile.TemporaryDirectory(prefix="imagebuilder-probe-") as tmp:
                staged = artifacts.fetch_all(
                    refs,
                    Path(tmp),
                    blob_fetcher=provider.blob_fetcher,
                    log=NullLog(),
                    roots=provider.file_roots,
                )
            shas = {a.uri: a.sha256 for a in staged}
    return ProbedInputs(source=source, artifacts=shas)
