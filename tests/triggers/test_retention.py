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


DRY = DEFINITION.replace(
    "/images/app", "/images/dry"
)  # its own definition: the runtime's sweeper never has it


def _publish(state: Path, tmp: Path, versions: list[str], definition: str = DEFINITION) -> Stores:
    stores = Stores(state)
    disk = tmp / "disk.vhd"
    disk.write_bytes(b"\0" * 4096 + b"retention")
    sha = sha256_file(disk)
    ref = GalleryImageId.parse(definition, "t")
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
        removed = sorted(
            e["subject"]
            for e in env.drain_events()
            if e["type"] == ev.VERSION_REMOVED and e["subject"].startswith(DEFINITION + "/")
        )
        assert removed == [f"{DEFINITION}/versions/1.0.0", f"{DEFINITION}/versions/1.0.2"]
    finally:
        env.api.delete_template("keep-producer")
        env.api.delete_template("keep-consumer")


def test_sweeper_dry_run_lists_the_set_it_then_removes(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweeper's retention pass in this process, on a gallery of its own (the runtime's sweeper works
    on another state dir): the dry run removes nothing and sends nothing; the real pass removes the same
    versions and sends one event each."""
    from triggers.sweeper import apply_retention_once

    state = tmp_path / "state"
    stores = _publish(state, tmp_path, ["1.0.0", "1.0.1", "1.0.2", "1.0.3"], DRY)
    ref = GalleryImageId.parse(DRY, "t")
    monkeypatch.setenv("AzureWebJobsStorage", env.connection)
    monkeypatch.setenv("IMAGEBUILDER_STATE_DIR", str(state))
    monkeypatch.setenv("IMAGEBUILDER_PROVIDER", "local")
    producer = template(distribute=[{"type": "SharedImage", "runOutputName": "g", "galleryImageId": DRY,
                                     "targetRegions": [{"name": "westeurope"}]}])  # fmt: skip
    producer["tags"] = {"retention.keepLast": "1"}
    env.api.put_template("dry-producer", producer)
    try:
        env.drain_events()
        listed = apply_retention_once(dry_run=True)
        assert sorted(listed) == [f"{DRY}/versions/1.0.{n}" for n in (0, 1, 2)]
        assert sorted(stores.versions(ref)) == ["1.0.0", "1.0.1", "1.0.2", "1.0.3"]
        removed = apply_retention_once(dry_run=False)
        assert sorted(removed) == sorted(listed)
        assert sorted(stores.versions(ref)) == ["1.0.3"]
        time.sleep(1)
        events = [
            e for e in env.drain_events() if e["type"] == ev.VERSION_REMOVED and e["subject"].startswith(DRY)
        ]
        assert sorted(e["subject"] for e in events) == sorted(listed)
    finally:
        env.api.delete_template("dry-producer")
