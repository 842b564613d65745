"""The local image store and Compute Gallery: versioning (Latest, major, Source, explicit),
excludeFromLatest, `latest` resolution, per-region replicas verified by sha256, conflicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuilder.providers.local.gallery import (
    GalleryError,
    GalleryImageId,
    Stores,
    copy_verified,
    parse_version,
    sha256_file,
)

IMAGE = "/subscriptions/s1/resourceGroups/RG/providers/Microsoft.Compute/galleries/Gal/images/App"


@pytest.fixture
def stores(tmp_path: Path) -> Stores:
    return Stores(tmp_path / "state")


@pytest.fixture
def image_file(tmp_path: Path) -> tuple[Path, Path, str]:
    disk = tmp_path / "disk.vhd"
    disk.write_bytes(b"\0" * 4096 + b"data" + b"\0" * 4096)
    rootfs = tmp_path / "rootfs.tar.zst"
    rootfs.write_bytes(b"tar")
    return disk, rootfs, sha256_file(disk)


def _publish(stores: Stores, image_file: tuple[Path, Path, str], run: str, *, versioning=None, exclude=False,
             image_id: str = IMAGE, source_version=None, regions=("westus",)) -> str:  # type: ignore[no-untyped-def]  # fmt: skip
    disk, rootfs, sha = image_file
    ref = GalleryImageId.parse(image_id, "t")
    stores.ensure_definition(ref, generation="V1", field="t")
    version, _ = stores.allocate_version(
        ref,
        owner={"run": run},
        versioning=versioning,
        source_version=source_version,
        base_meta={
            "sha256": sha,
            "excludeFromLatest": exclude,
            "targetRegions": list(regions),
            "generation": "V1",
        },
        field="t",
    )
    for region in regions:
        stores.replicate(
            ref, version, region, disk=disk, rootfs=rootfs, sha256=sha, settings={"replicaCount": 1}
        )
    return version


def test_latest_versioning_and_latest_resolution(stores: Stores, image_file: tuple[Path, Path, str]) -> None:
    assert _publish(stores, image_file, "r1") == "1.0.0"
    assert _publish(stores, image_file, "r2", versioning={"scheme": "Latest"}) == "1.0.1"
    assert _publish(stores, image_file, "r1") == "1.0.0"  # same owner: same version
    assert _publish(stores, image_file, "r3", versioning={"scheme": "Latest", "major": 3}) == "3.0.0"
    assert _publish(stores, image_file, "r4", versioning={"scheme": "Latest", "major": 1}) == "1.0.2"
    assert _publish(stores, image_file, "r5", versioning={"scheme": "Latest"}, exclude=True) == "3.0.1"
    found = stores.find_version(f"{IMAGE}/versions/latest", "source")
    assert found.meta["name"] == "3.0.0"  # 3.0.1 is excluded from latest
    assert stores.find_version(f"{IMAGE.lower()}/versions/3.0.1", "source").meta["name"] == "3.0.1"
    assert found.disk.read_bytes() == image_file[0].read_bytes()


def test_source_and_explicit_versions(stores: Stores, image_file: tuple[Path, Path, str]) -> None:
    assert (
        _publish(stores, image_file, "r1", versioning={"scheme": "Source"}, source_version="12.20241201.07")
        == "12.20241201.7"
    )
    with pytest.raises(GalleryError) as err:
        _publish(stores, image_file, "r2", versioning={"scheme": "Source"}, source_version="latest")
    assert "Source" in str(err.value)
    assert _publish(stores, image_file, "r3", image_id=f"{IMAGE}/versions/2.5.9") == "2.5.9"
    with pytest.raises(GalleryError) as exists:
        _publish(stores, image_file, "r4", image_id=f"{IMAGE}/versions/2.5.9")
    assert exists.value.code == "GalleryImageVersionExists"
    with pytest.raises(GalleryError):
        _publish(stores, image_file, "r5", versioning={"scheme": "Weekly"})


def test_regions_are_verified_replicas_at_the_cost_of_a_hard_link(
    stores: Stores, image_file: tuple[Path, Path, str]
) -> None:
    version = _publish(stores, image_file, "r1", regions=("westus", "EastUS2"))
    ref = GalleryImageId.parse(IMAGE, "t")
    folder = stores.image_definition_dir(ref) / version
    copies = [folder / "westus" / "disk.vhd", folder / "eastus2" / "disk.vhd"]
    assert all(sha256_file(c) == image_file[2] for c in copies)
    # one disk per run: the regions share its blocks, and deleting one replica leaves the other intact
    assert copies[0].stat().st_ino == copies[1].stat().st_ino == image_file[0].stat().st_ino
    meta = stores.versions(ref)[version]
    assert meta["provisioningState"] == "Succeeded"
    assert set(meta["regions"]) == {"westus", "eastus2"}
    assert stores.find_version(f"{IMAGE}/versions/{version}", "s", prefer_region="EastUS2").disk == copies[1]
    copies[0].unlink()
    assert sha256_file(copies[1]) == image_file[2]


def test_a_replica_whose_source_does_not_have_the_hash_is_refused(
    tmp_path: Path, image_file: tuple[Path, Path, str]
) -> None:
    with pytest.raises(GalleryError) as bad:
        copy_verified(image_file[0], tmp_path / "r" / "disk.vhd", "0" * 64, share=True)
    assert bad.value.code == "ReplicationChecksumMismatch"
    assert not (tmp_path / "r" / "disk.vhd").exists()


def test_unknown_sources_and_bad_ids(stores: Stores) -> None:
    with pytest.raises(GalleryError) as missing:
        stores.find_version(f"{IMAGE}/versions/latest", "properties.source.imageVersionId")
    assert missing.value.code == "BadSharedImageVersionSource"
    assert "properties.source.imageVersionId" in str(missing.value)
    with pytest.raises(GalleryError):
        stores.find_image("/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/images/nope", "f")
    with pytest.raises(GalleryError):
        GalleryImageId.parse("/subscriptions/s/not-a-gallery", "f")
    assert parse_version("1.2.3") == (1, 2, 3) and parse_version("1.2") is None


def test_managed_image_location_conflict_and_replace(
    stores: Stores, image_file: tuple[Path, Path, str]
) -> None:
    disk, rootfs, sha = image_file
    image_id = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/images/golden"
    first = stores.publish_image(
        image_id, "westus", disk=disk, rootfs=rootfs, meta={"sha256": sha, "run": "r1"}, field="f"
    )
    assert first.disk.is_file() and first.rootfs.is_file()
    with pytest.raises(GalleryError) as err:
        stores.publish_image(
            image_id, "eastus", disk=disk, rootfs=rootfs, meta={"sha256": sha, "run": "r2"}, field="f"
        )
    assert "westus" in str(err.value)
    again = stores.publish_image(
        image_id, "WestUS", disk=disk, rootfs=rootfs, meta={"sha256": sha, "run": "r2"}, field="f"
    )
    assert again.meta["run"] == "r2"
    assert (
        stores.find_image(image_id.upper().replace("/SUBSCRIPTIONS", "/subscriptions"), "f").meta["run"]
        == "r2"
    )


def test_generation_mismatch_with_existing_definition(stores: Stores) -> None:
    ref = GalleryImageId.parse(IMAGE, "t")
    stores.ensure_definition(ref, generation="V2", field="t")
    with pytest.raises(GalleryError) as err:
        stores.ensure_definition(ref, generation="V1", field="properties.distribute[0]")
    assert "hyperVGeneration" in str(err.value)


def test_ids_and_regions_compare_as_arm_compares_them(
    stores: Stores, image_file: tuple[Path, Path, str]
) -> None:
    """Issue 16: gallery ids with lower-case resourcegroups, regions by display name ("West US 2")."""
    lower = IMAGE.replace("resourceGroups", "resourcegroups").lower()
    version = _publish(stores, image_file, "r1", image_id=lower, regions=("West US 2", "eastus"))
    meta = stores.versions(GalleryImageId.parse(IMAGE, "t"))[version]
    assert meta["provisioningState"] == "Succeeded" and set(meta["regions"]) == {"westus2", "eastus"}
    found = stores.find_version(f"{IMAGE}/versions/latest", "source", prefer_region="westus2")
    assert found.meta["name"] == version and found.disk.parent.name == "westus2"
    assert _publish(stores, image_file, "r1", regions=("westus2", "East US")) == version  # same owner
