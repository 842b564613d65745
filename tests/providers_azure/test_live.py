"""Live tier: the provider against a real subscription. Skipped unless AZURE_SUBSCRIPTION_ID is set.

`prepare` only reads (it resolves a real platform image and downloads nothing). The full build, which
creates and deletes a VM (minutes, and costs money), runs only with IMAGEBUILDER_AZURE_LIVE_BUILD=1.
"""

from __future__ import annotations

import os
import uuid

import pytest

from imagebuilder.pipeline.messages import BuildInput, RunRef
from imagebuilder.providers.azure.provider import AzureProvider
from tests.providers_azure.conftest import ListLog

pytestmark = pytest.mark.azure


def _build(location: str) -> BuildInput:
    sub = os.environ["AZURE_SUBSCRIPTION_ID"]
    rg = os.environ.get("IMAGEBUILDER_AZURE_TEST_RG", "imagebuilder-tests")
    template = {
        "location": location,
        "properties": {
            "source": {
                "type": "PlatformImage",
                "publisher": "Canonical",
                "offer": "ubuntu-24_04-lts",
                "sku": "server",
                "version": "latest",
            },
            "customize": [
                {"type": "Shell", "name": "hello", "inline": ["echo hello from the build VM", "uname -a"]}
            ],
            "distribute": [],
        },
    }
    return BuildInput(
        run=RunRef(
            subscription_id=sub, resource_group=rg, template_name="live-test", run_id=uuid.uuid4().hex[:8]
        ),
        template=template,
    )


def test_live_prepare_resolves_latest_ubuntu():
    provider = AzureProvider()
    log = ListLog()
    prepared = provider.prepare(_build(os.environ.get("AZURE_LOCATION", "westus2")), log)
    assert prepared.status == "succeeded", prepared
    assert prepared.source.exact_version and prepared.source.exact_version != "latest"


@pytest.mark.skipif(
    os.environ.get("IMAGEBUILDER_AZURE_LIVE_BUILD") != "1",
    reason="set IMAGEBUILDER_AZURE_LIVE_BUILD=1 to build a VM",
)
def test_live_build_vm_customize_and_cleanup():
    import time

    provider = AzureProvider()
    log = ListLog()
    build = _build(os.environ.get("AZURE_LOCATION", "westus2"))
    try:
        prepared = provider.prepare(build, log)
        result = provider.create_build_env(build, prepared, log)
        while not hasattr(result, "handle"):
            time.sleep(result.retry_after_seconds)
            result = provider.poll(result, log, build)
        assert result.handle["status"] == "ready", result
        step = provider.customize(build, result, 0, log)
        while not hasattr(step, "status"):
            time.sleep(step.retry_after_seconds)
            step = provider.poll(step, log, build)
        assert step.status == "succeeded" and "hello from the build VM" in log.text
    finally:
        report = provider.cleanup(build, keep=False, log=log)
        assert report.errors == []
