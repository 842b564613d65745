"""Probing a template's inputs on this machine without building: the source `latest` resolves to (the
catalog or the local gallery) and the SHA-256 of every scriptUri/sourceUri, fetched into a throwaway
folder exactly as `prepare` fetches them. What triggers compare to decide whether to build.

Exceptions: those of `LocalProvider.prepare`'s parts (`CatalogError`, `GalleryError`, `ArtifactError`,
`TransientProviderError`), all `ProviderError`s naming the field.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from imagebuilder.providers.base import NullLog
from imagebuilder.providers.local import artifacts, prepare
from imagebuilder.providers.local.provider import LocalProvider
from imagebuilder.providers.probe import ProbedInputs, probe_run


def probe_inputs(
    template: dict[str, Any], *, with_artifacts: bool, state_dir: Path | None = None
) -> ProbedInputs:
    """Resolve the source of `template` (an ARM resource) and, with `with_artifacts`, hash its files."""
    provider = LocalProvider(state_dir=state_dir)
    ctx = provider.context(probe_run(template, "probe", "probe", "probe"))
    source = prepare.resolve_source(ctx)
    shas: dict[str, str] = {}
    if with_artifacts:
        refs = artifacts.collect(ctx.template)
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
