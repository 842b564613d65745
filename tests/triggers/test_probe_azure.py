"""Input probes through the ComputeProvider seam with the Azure provider, against the checking fake ARM
endpoint of tests/providers_azure (the SDK's real pipeline): `latest` resolved, artifacts hashed, nothing
created, and a newer Marketplace version changes the fingerprint."""

from __future__ import annotations

import hashlib

import pytest

from imagebuilder.pipeline.fingerprint import fingerprint_of
from imagebuilder.providers.azure.provider import AzureProvider
from imagebuilder.providers.base import ProviderError
from imagebuilder.providers.probe import probe_prepare, probe_run
from tests.providers_azure.conftest import RG, TEMPLATE, arm, clock, linux_template, provider  # noqa: F401
from tests.providers_azure.fake_arm import SUB, FakeArm


def test_azure_probe_resolves_latest_and_hashes_without_creating_anything(
    arm: FakeArm,  # noqa: F811
    provider: AzureProvider,  # noqa: F811
) -> None:
    template = linux_template()
    before = set(arm.resources)
    probed = probe_prepare(provider, probe_run(template, SUB, RG, TEMPLATE))
    assert probed.source.exact_version == "24.04.202411030"
    assert probed.artifacts == {
        "https://example.com/setup.sh": hashlib.sha256(b"#!/bin/sh\necho setup\n").hexdigest(),
        "https://example.com/motd": hashlib.sha256(b"built by imagebuilder\n").hexdigest(),
    }
    assert set(arm.resources) == before
    assert not [r for r in arm.requests if r[0] in ("PUT", "POST", "PATCH", "DELETE")]
    first = fingerprint_of(template, probed.source.exact_version, probed.artifacts)

    arm.platform_images["canonical:ubuntu-24_04-lts:server"]["24.04.202412010"] = {
        "osDiskImage": {"operatingSystem": "Linux"},
        "hyperVGeneration": "V1",
    }
    again = probe_prepare(provider, probe_run(template, SUB, RG, TEMPLATE))
    assert again.source.exact_version == "24.04.202412010"
    assert (
        fingerprint_of(template, again.source.exact_version, again.artifacts).fingerprint != first.fingerprint
    )
    assert arm.problems == []


def test_azure_probe_of_a_missing_source_names_it(
    arm: FakeArm,  # noqa: F811
    provider: AzureProvider,  # noqa: F811
) -> None:
    template = linux_template()
    template["properties"]["source"]["sku"] = "no-such-sku"
    with pytest.raises(ProviderError, match="no-such-sku"):
        probe_prepare(provider, probe_run(template, SUB, RG, TEMPLATE))
