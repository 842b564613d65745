"""Retention applied by the sweeper on the real runtime: a template's `retention.keepLast` tag removes
exactly the versions the policy names from the local gallery, never `latest` nor a version another
template uses as its source, with one ImageVersionRemoved event per version."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from imagebuilder.pipeline import events as ev
from imagebuilder.providers.local.gallery import GalleryImageId, Stores, sha256_file
from tests.triggers.conftest import RG, SUB, Env, template

pytestmark = pytest.mark.slow

DEFINITION = (
    f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/keepGallery/images/app"
)


def _publish(state: Path, tmp: Path, versions: list[str]) -> Stores:
    stores = Stores(state)
    disk = tmp / "disk.vhd"
    disk.write_bytes(b"\0" * 4096 + b"retention")
    sha = sha256_file(disk)
    ref = GalleryImageId.parse(DEFINITION, "t")
    stores.ensure_definition(ref, generation="V1", field="t")
    for n, version in enumerate(versions):
        got, _ = stores.allocate_version(
            ref, owner={"run": f"seed{n}"}, versioning=None, source_version=None,
            base_meta={"sha256": sha, "targetRegions": ["westeurope"]}, field="t",
        )  # fmt: skip
        assert got == version
        stores.replicate(ref, version, "westeurope", disk=disk, rootfs=tmp / "none", sha256=sha, settings={})
    return stores


def test_sweeper_applies_the_templates_retention_policy(env: Env, tmp_path: Path) -> None:
    stores = _publish(env.provider_state, tmp_path, ["1.0.0", "1.0.1", "1.0.2", "1.0.3", "1.0.4"])
    ref = GalleryImageId.parse(DEFINITION, "t")
    env.drain_events()
    # another team builds on 1.0.1: protected
    env.api.put_template(
        "keep-consumer",
        template(source={"type": "SharedImageVersion", "imageVersionId": f"{DEFINITION}/versions/1.0.1"}),
    )
    producer = template(distribute=[{"type": "SharedImage", "runOutputName": "g", "galleryImageId": DEFINITION,
                                     "targetRegions": [{"name": "westeurope"}]}])  # fmt: skip
    producer["tags"] = {"retention.keepLast": "2"}
    env.api.put_template("keep-producer", producer)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(stores.versions(ref)) > 3:
            time.sleep(0.5)
        assert sorted(stores.versions(ref)) == ["1.0.1", "1.0.3", "1.0.4"], env.runtime.tail(30)
        latest = stores.find_version(f"{DEFINITION}/versions/latest", "source")
        assert json.loads(json.dumps(latest.meta))["name"] == "1.0.4"
        time.sleep(1)
        removed = sorted(e["subject"] for e in env.drain_events() if e["type"] == ev.VERSION_REMOVED)
        assert removed == [f"{DEFINITION}/versions/1.0.0", f"{DEFINITION}/versions/1.0.2"]
    finally:
        env.api.delete_template("keep-producer")
        env.api.delete_template("keep-consumer")
