"""Probing a template's inputs through the ComputeProvider seam, without building: `prepare` of a
throwaway run resolves the source (`latest` made exact) and fetches and hashes every scriptUri/sourceUri
before any build resource exists, which is what triggers compare. For providers whose `prepare` leaves
nothing behind (Azure: it only reads); the local provider has `providers.local.probe` (a temp folder).

Exceptions::

    ProviderError                 the source or an artifact cannot be used (the message names the field)
    └── TransientProviderError    the provider asked to wait (throttled): try again later
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imagebuilder.pipeline.messages import BuildInput, Pending, RunRef, SourceInfo
from imagebuilder.providers.base import ComputeProvider, NullLog, ProviderError, TransientProviderError

PROBE_RUN_ID = "probe"


@dataclass(frozen=True)
class ProbedInputs:
    """The resolved source and every artifact's SHA-256, keyed by URI as a run records them."""

    source: SourceInfo
    artifacts: dict[str, str] = field(default_factory=dict)


def probe_run(template: dict[str, Any], sub: str, rg: str, name: str) -> BuildInput:
    """The throwaway run a probe prepares (the template's own subscription: its clients and rights)."""
    ref = RunRef(subscription_id=sub, resource_group=rg, template_name=name, run_id=PROBE_RUN_ID)
    return BuildInput(run=ref, template=template)


def probe_prepare(provider: ComputeProvider, build: BuildInput) -> ProbedInputs:
    """Run `provider.prepare` for `build` and return what it resolved and fetched."""
    result = provider.prepare(build, NullLog())
    if isinstance(result, Pending):
        raise TransientProviderError(
            "the provider asked to wait while resolving the source", hint="the next evaluation retries"
        )
    if result.status != "succeeded" or result.source is None:
        error = result.error
        raise ProviderError(f"{error.code}: {error.message}" if error else "prepare failed")
    return ProbedInputs(result.source, {a.uri: a.sha256 for a in result.artifacts})
