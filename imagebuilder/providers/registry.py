"""Choosing the compute provider by name (the app setting IMAGEBUILDER_PROVIDER).

Kept apart from `base.py` so that the seam itself imports no implementation: `providers.local` and
`providers.azure` both import `base`, and must stay independent of each other.
"""

from __future__ import annotations

from typing import Any

from imagebuilder.providers.base import ComputeProvider, ProviderConfigError


def get_provider(name: str, **options: Any) -> ComputeProvider:
    """The provider named `local` or `azure`, constructed with `options`."""
    if name == "local":
        from imagebuilder.providers.local.provider import LocalProvider

        return LocalProvider(**options)
    if name == "azure":
        from imagebuilder.providers.azure.provider import AzureProvider

        return AzureProvider(**options)
    raise ProviderConfigError(
        f"unknown provider {name!r}", hint="set IMAGEBUILDER_PROVIDER to local or azure"
    )
