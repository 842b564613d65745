"""Names from templates used in paths under the state dir (template name, run id, resource group,
subscription, gallery/image names, runOutputName): the API validates them, and the local provider refuses
the dangerous ones again on its own (defense in depth), so no crafted message can leave the state dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.providers.local import gallery
from imagebuilder.providers.local.layout import PathEscapeError, RunLayout, StateLayout, check_name, safe_name

EVIL = ["..", ".", "../../etc", "a/b", "a\\b", "a\x00b", "a\nb", "x" * 1000, "", "  "]


@pytest.mark.parametrize("evil", EVIL)
@pytest.mark.parametrize("field", ["subscription_id", "resource_group", "template_name", "run_id"])
def test_run_layout_refuses_names_that_could_escape(tmp_path: Path, field: str, evil: str) -> None:
    names = {"subscription_id": "s", "resource_group": "rg", "template_name": "t", "run_id": "r1"}
    names[field] = evil
    with pytest.raises(PathEscapeError):
        RunLayout.for_run(tmp_path, RunRef(**names))


def test_run_layout_stays_under_the_state_dir(tmp_path: Path) -> None:
    ok = RunLayout.for_run(
        tmp_path, RunRef(subscription_id="s", resource_group="rg(1).x", template_name="t.-_", run_id="r")
    )
    runs = StateLayout(tmp_path).runs
    assert ok.run_dir.parent == runs and os.path.realpath(ok.run_dir).startswith(str(runs) + "/")


@pytest.mark.parametrize("evil", ["..", "a\x00b", "x" * 1000, "."])
def test_store_ids_with_evil_segments_are_refused(evil: str) -> None:
    with pytest.raises(gallery.GalleryError) as err:
        gallery.ImageId.parse(
            f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/{evil}", "f"
        )
    assert err.value.code == "BadManagedImageId"
    for seg in ("gallery", "image", "version"):
        parts = {"gallery": "g", "image": "i", "version": "1.0.0"}
        parts[seg] = evil
        text = (
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/"
            f"{parts['gallery']}/images/{parts['image']}/versions/{parts['version']}"
        )
        with pytest.raises(gallery.GalleryError) as err:
            gallery.GalleryImageId.parse(text, "properties.distribute[0].galleryImageId")
        assert err.value.code == "BadSharedImageDistribute"
        assert "properties.distribute[0].galleryImageId" in str(err.value)


def test_store_folders_of_valid_ids_stay_in_their_store(tmp_path: Path) -> None:
    stores = gallery.Stores(tmp_path)
    image = gallery.ImageId.parse(
        "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/images/img(1)", "f"
    )
    assert stores.image_dir(image).parent.parent.parent == tmp_path / "images"
    ref = gallery.GalleryImageId.parse(
        "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/galleries/g.1/images/i_2", "f"
    )
    assert stores.image_definition_dir(ref).parents[3] == tmp_path / "gallery"


def test_safe_name_never_yields_a_path_component() -> None:
    for evil in [*EVIL, "...", "./.", "-", "a/../b"]:
        name = safe_name(evil)
        assert name not in ("", ".", "..") and "/" not in name and "\x00" not in name and len(name) <= 64


def test_check_name_accepts_azure_names() -> None:
    for good in ("rg-1", "My_RG.(x)", "00000000-0000-0000-0000-000000000000", "t" * 80):
        assert check_name(good, "n") == good
