"""Fixtures for the Azure provider tests: a checking fake ARM transport, a static credential, templates."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest

from imagebuilder.pipeline.messages import BuildInput, Pending, RunRef
from imagebuilder.providers.azure.provider import AzureProvider
from imagebuilder.providers.base import MemoryLog
from tests.providers_azure.fake_arm import SUB, FakeArm, FakeCredential

RG = "myResourceGroup"
TEMPLATE = "myImageTemplate"
RUN = "run-0001"
PREFIX = f"/subscriptions/{SUB}/resourceGroups"
GALLERY_IMAGE = f"{PREFIX}/galleryRG/providers/Microsoft.Compute/galleries/myGallery/images/ubuntu"


class ListLog(MemoryLog):
    """A LogSink that keeps what was written (with a log URI, as a run's has)."""

    uri = "https://logs.example/customization.log"


class Clock:
    """An injectable clock whose sleeps advance it (no real waiting anywhere)."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def linux_template(**props: Any) -> dict[str, Any]:
    template = {
        "location": "westus",
        "identity": {
            "type": "UserAssigned",
            "userAssignedIdentities": {
                f"{PREFIX}/rg1/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1": {}
            },
        },
        "properties": {
            "source": {
                "type": "PlatformImage",
                "publisher": "Canonical",
                "offer": "ubuntu-24_04-lts",
                "sku": "server",
                "version": "latest",
            },
            "customize": [
                {"type": "Shell", "name": "inline", "inline": ["echo hello", "apt-get -y update"]},
                {"type": "Shell", "name": "script", "scriptUri": "https://example.com/setup.sh"},
                {
                    "type": "File",
                    "name": "motd",
                    "sourceUri": "https://example.com/motd",
                    "destination": "/etc/motd",
                },
            ],
            "validate": {
                "inVMValidations": [{"type": "Shell", "name": "check", "inline": ["test -f /etc/motd"]}]
            },
            "distribute": [
                {
                    "type": "SharedImage",
                    "runOutputName": "sig",
                    "galleryImageId": GALLERY_IMAGE,
                    "targetRegions": [
                        {"name": "West US", "replicaCount": 2},
                        {"name": "East US", "storageAccountType": "Standard_ZRS"},
                    ],
                    "excludeFromLatest": True,
                    "artifactTags": {"team": "img"},
                },
                {
                    "type": "ManagedImage",
                    "runOutputName": "mi",
                    "imageId": f"{PREFIX}/{RG}/providers/Microsoft.Compute/images/out",
                    "location": "westus",
                },
                {
                    "type": "VHD",
                    "runOutputName": "vhd",
                    "uri": "https://acct.blob.core.windows.net/vhds/out.vhd",
                },
            ],
            "managedResourceTags": {"costcenter": "42"},
        },
    }
    template["properties"].update(props)
    return template


def build_input(template: dict[str, Any], run: str = RUN) -> BuildInput:
    return BuildInput(
        run=RunRef(subscription_id=SUB, resource_group=RG, template_name=TEMPLATE, run_id=run),
        template=template,
    )


def seed(arm: FakeArm) -> None:
    """What exists in the subscription before a build: images, a gallery, files."""
    arm.platform_images["canonical:ubuntu-24_04-lts:server"] = {
        "24.04.202409010": {"osDiskImage": {"operatingSystem": "Linux"}, "hyperVGeneration": "V1"},
        "24.04.202411030": {"osDiskImage": {"operatingSystem": "Linux"}, "hyperVGeneration": "V1"},
        "24.04.202410020": {"osDiskImage": {"operatingSystem": "Linux"}, "hyperVGeneration": "V1"},
    }
    arm.platform_images["canonical:ubuntu-24_04-lts:server-gen2"] = {
        "24.04.202411030": {
            "osDiskImage": {"operatingSystem": "Linux"},
            "hyperVGeneration": "V2",
            "plan": {"name": "server-gen2", "product": "ubuntu", "publisher": "canonical"},
        },
    }
    gallery_rg = f"{PREFIX}/galleryRG"
    arm.resources[gallery_rg.lower()] = {
        "id": gallery_rg,
        "name": "galleryRG",
        "type": "Microsoft.Resources/resourceGroups",
        "location": "westus",
        "tags": {},
        "properties": {"provisioningState": "Succeeded"},
    }
    arm.resources[GALLERY_IMAGE.lower()] = {
        "id": GALLERY_IMAGE,
        "name": "ubuntu",
        "type": "Microsoft.Compute/galleries/images",
        "location": "westus",
        "tags": {},
        "properties": {
            "osType": "Linux",
            "osState": "Generalized",
            "hyperVGeneration": "V1",
            "identifier": {"publisher": "me", "offer": "ubuntu", "sku": "24"},
            "provisioningState": "Succeeded",
        },
    }
    for name, exclude in (("1.0.0", False), ("1.2.9", False), ("1.3.0", True)):
        vid = f"{GALLERY_IMAGE}/versions/{name}"
        arm.resources[vid.lower()] = {
            "id": vid,
            "name": name,
            "type": "Microsoft.Compute/galleries/images/versions",
            "location": "westus",
            "tags": {},
            "properties": {
                "publishingProfile": {"excludeFromLatest": exclude, "targetRegions": [{"name": "West US"}]},
                "provisioningState": "Succeeded",
            },
        }
    arm.files["https://example.com/setup.sh"] = b"#!/bin/sh\necho setup\n"
    arm.files["https://example.com/motd"] = b"built by imagebuilder\n"


@pytest.fixture
def arm() -> FakeArm:
    fake = FakeArm()
    seed(fake)
    return fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


class RecordingProvider(AzureProvider):
    """The provider as the activities drive it: the poll activity hands `poll` the run's BuildInput from
    its payload; here the build given to the method that returned the Pending."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.builds: dict[tuple[str, str], BuildInput] = {}

    def _remember(self, build: BuildInput) -> None:
        self.builds[(build.run.template_id.lower(), build.run.run_id)] = build

    def prepare(self, build, log):  # type: ignore[no-untyped-def]
        self._remember(build)
        return super().prepare(build, log)

    def create_build_env(self, build, prepared, log):  # type: ignore[no-untyped-def]
        self._remember(build)
        return super().create_build_env(build, prepared, log)

    def customize(self, build, env, index, log):  # type: ignore[no-untyped-def]
        self._remember(build)
        return super().customize(build, env, index, log)

    def validate(self, build, env, log):  # type: ignore[no-untyped-def]
        self._remember(build)
        return super().validate(build, env, log)

    def generalize(self, build, env, log):  # type: ignore[no-untyped-def]
        self._remember(build)
        return super().generalize(build, env, log)

    def capture(self, build, env, log):  # type: ignore[no-untyped-def]
        self._remember(build)
        return super().capture(build, env, log)

    def distribute(self, build, captured, target_index, region, log):  # type: ignore[no-untyped-def]
        self._remember(build)
        return super().distribute(build, captured, target_index, region, log)

    def poll(self, pending, log, build=None):  # type: ignore[no-untyped-def]
        if build is None:
            run = RunRef.model_validate(pending.operation["run"])
            build = self.builds[(run.template_id.lower(), run.run_id)]
        return super().poll(pending, log, build)


@pytest.fixture
def provider(arm: FakeArm, clock: Clock) -> AzureProvider:
    return RecordingProvider(
        credential=FakeCredential(),
        transport=arm,
        poll_interval=15,
        sleep=clock.sleep,
        clock=clock,
        min_write_interval=0.5,
        cleanup_budget_seconds=600,
        environ={},
    )


def settle(provider: AzureProvider, result: Any, log: ListLog, limit: int = 60) -> tuple[Any, int]:
    """Poll a result until it is not Pending, sending each Pending through JSON like the durable boundary."""
    polls = 0
    while isinstance(result, Pending):
        text = json.dumps(result.model_dump(mode="json"))
        assert "sig=" not in text and "adminPassword" not in text, "a secret would enter durable history"
        assert '"managedResourceTags"' not in text and '"inVMValidations"' not in text, "ids only"
        wire = json.loads(text)
        result = provider.poll(Pending.model_validate(wire), log)
        polls += 1
        assert polls < limit, "never finished"
    return result, polls


def own_resources(arm: FakeArm, run: str = RUN) -> list[str]:
    return [r["id"] for r in arm.resources.values() if (r.get("tags") or {}).get("imagebuilder-run") == run]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("AZURE_SUBSCRIPTION_ID"):
        return
    skip = pytest.mark.skip(reason="needs AZURE_SUBSCRIPTION_ID (live Azure tier)")
    for item in items:
        if "azure" in item.keywords and "providers_azure" in str(item.fspath):
            item.add_marker(skip)


def deep(template: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(template)
