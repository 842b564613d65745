"""Retention in the local gallery: the dry run lists exactly what the real run then removes, never the
version `latest` resolves to nor a protected one, and `latest` still resolves afterwards."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from imagebuilder.provenance.retention import RetentionPolicy
from imagebuilder.providers.local.gallery import GalleryImageId, Stores, sha256_file
from imagebuilder.providers.local.retention import apply_retention

IMAGE = "/subscriptions/s1/resourceGroups/RG/providers/Microsoft.Compute/galleries/Gal/images/App"
NOW = datetime(2026, 12, 6, tzinfo=UTC)


def _gallery(tmp_path: Path) -> tuple[Stores, GalleryImageId]:
    stores = Stores(tmp_path / "state")
    disk = tmp_path / "disk.vhd"
    disk.write_bytes(b"\0" * 4096 + b"data")
    sha = sha256_file(disk)
    ref = GalleryImageId.parse(IMAGE, "t")
    stores.ensure_definition(ref, generation="V1", field="t")
    ages = {"1.0.0": 90, "1.0.1": 60, "1.0.2": 40, "1.0.3": 20, "1.0.4": 1}
    for n, (version, days) in enumerate(ages.items()):
        got, _ = stores.allocate_version(
            ref, owner={"run": f"r{n}"}, versioning=None, source_version=None,
            base_meta={"sha256": sha, "excludeFromLatest": version == "1.0.4", "targetRegions": ["westus"]},
            field="t",
        )  # fmt: skip
        assert got == version
        stores.replicate(ref, version, "westus", disk=disk, rootfs=tmp_path / "none", sha256=sha, settings={})
        meta_path = stores.image_definition_dir(ref) / version / "version.json"
        meta = json.loads(meta_path.read_text())
        meta["publishedDate"] = (NOW - timedelta(days=days)).isoformat()
        meta_path.write_text(json.dumps(meta))
    return stores, ref


def test_dry_run_lists_what_the_policy_removes_and_removal_matches(tmp_path: Path) -> None:
    stores, ref = _gallery(tmp_path)
    policies = {IMAGE.lower(): (RetentionPolicy(keep_last=1, max_age_days=30), "image template t")}
    protected = {IMAGE.lower(): {"1.0.1"}}
    dry = apply_retention(tmp_path / "state", policies, protected, now=NOW, dry_run=True)
    assert dry.errors == []
    listed = [r.version for r in dry.removed]
    assert listed == ["1.0.2", "1.0.0"]  # 1.0.4 last, 1.0.3 latest (1.0.4 excluded), 1.0.1 protected
    assert sorted(stores.versions(ref)) == ["1.0.0", "1.0.1", "1.0.2", "1.0.3", "1.0.4"], "dry run removed"

    real = apply_retention(tmp_path / "state", policies, protected, now=NOW)
    assert [r.version for r in real.removed] == listed
    assert real.removed[0].version_id == f"{IMAGE}/versions/1.0.2"
    assert sorted(stores.versions(ref)) == ["1.0.1", "1.0.3", "1.0.4"]
    assert not list(stores.image_definition_dir(ref).glob(".removing-*"))
    latest = stores.find_version(f"{IMAGE}/versions/latest", "source")
    assert latest.meta["name"] == "1.0.3" and latest.disk.is_file()
    again = apply_retention(tmp_path / "state", policies, protected, now=NOW)
    assert again.removed == []


def test_definition_policy_and_versions_being_created(tmp_path: Path) -> None:
    stores, ref = _gallery(tmp_path)
    folder = stores.image_definition_dir(ref)
    definition = json.loads((folder / "definition.json").read_text())
    definition["retention"] = {"keepLast": 2}
    (folder / "definition.json").write_text(json.dumps(definition))
    meta = json.loads((folder / "1.0.0" / "version.json").read_text())
    meta["provisioningState"] = "Creating"  # a run is still replicating it
    (folder / "1.0.0" / "version.json").write_text(json.dumps(meta))
    report = apply_retention(tmp_path / "state", {}, {}, now=NOW)
    assert [r.version for r in report.removed] == ["1.0.2", "1.0.1"]
    assert report.removed[0].policy_from.endswith("(definition retention)")
    definition["retention"] = {"keepLast": "many"}
    (folder / "definition.json").write_text(json.dumps(definition))
    bad = apply_retention(tmp_path / "state", {}, {}, now=NOW)
    assert bad.removed == [] and "retention.keepLast" in bad.errors[0]
