"""The local provider's template lifecycle (providers/local/staging.py): what a create checks, the
template's staging group (generated or given), and what a delete removes or empties."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagebuilder.pipeline.messages import BuildInput, RunRef, TemplateInput, TemplateRef
from imagebuilder.providers.base import NullLog
from imagebuilder.providers.local.provider import LocalProvider

SUB = "00000000-0000-0000-0000-000000000001"


def template(name: str = "t1", **props: Any) -> TemplateInput:
    return TemplateInput(
        ref=TemplateRef(subscription_id=SUB, resource_group="rg1", template_name=name),
        template={
            "location": "westus",
            "properties": {
                "source": {
                    "type": "PlatformImage",
                    "publisher": "ImageBuilderLocal",
                    "offer": "busybox",
                    "sku": "stable",
                    "version": "latest",
                },
                "distribute": [{"type": "VHD", "runOutputName": "v"}],
                **props,
            },
        },
    )


def test_generated_group_is_idempotent_and_deleted(tmp_path: Path) -> None:
    provider = LocalProvider(state_dir=tmp_path)
    first = provider.create_template(template(), NullLog())
    assert first.status == "succeeded" and first.exact_staging_resource_group
    assert first.exact_staging_resource_group.startswith(f"/subscriptions/{SUB}/resourceGroups/IT_rg1_t1_")
    assert len(first.exact_staging_resource_group.rsplit("/", 1)[1]) <= 90
    again = provider.create_template(template(), NullLog())
    assert again.exact_staging_resource_group == first.exact_staging_resource_group, "a retry finds it"
    folder = Path(first.staging["folder"])
    (folder / "leftover").write_text("x")
    report = provider.delete_template(template(), NullLog())
    assert report.removed == [first.exact_staging_resource_group] and not folder.exists()
    assert provider.delete_template(template(), NullLog()).removed == [], "deleting twice is no error"


def test_given_group_is_emptied_not_deleted_and_not_shared(tmp_path: Path) -> None:
    provider = LocalProvider(state_dir=tmp_path)
    given = f"/subscriptions/{SUB}/resourceGroups/My-Staging"
    made = provider.create_template(template(stagingResourceGroup=given), NullLog())
    assert made.status == "succeeded" and made.exact_staging_resource_group == given
    # ARM ids are case-insensitive: the same group spelt otherwise is the same group
    other = provider.create_template(
        template("t2", stagingResourceGroup=given.lower().replace("resourcegroups", "resourceGroups")),
        NullLog(),
    )
    assert other.status == "failed" and other.error is not None
    assert other.error.code == "BadStagingResourceGroup" and "t1" in other.error.message
    folder = Path(made.staging["folder"])
    (folder / "build-artifact").write_text("x")
    provider.delete_template(template(stagingResourceGroup=given), NullLog())
    assert folder.is_dir() and list(folder.iterdir()) == [], "emptied, kept"
    assert (
        provider.create_template(template("t2", stagingResourceGroup=given), NullLog()).status == "succeeded"
    )


def test_sources_that_do_not_resolve(tmp_path: Path) -> None:
    provider = LocalProvider(state_dir=tmp_path, environ={})
    pir = template()
    pir.template["properties"]["source"].update(publisher="Canonical", offer="ubuntu-24_04-lts", sku="server")
    failed = provider.create_template(pir, NullLog())
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "BadPIRSource"
    assert "Canonical:ubuntu-24_04-lts:server:latest" in failed.error.message
    assert "IMAGEBUILDER_LOCAL_CATALOG" in failed.error.message
    image = template(
        source={"type": "ManagedImage", "imageId": f"/subscriptions/{SUB}/resourceGroups/rg1/providers/"
                "Microsoft.Compute/images/absent"}
    )  # fmt: skip
    missing = provider.create_template(image, NullLog())
    assert missing.error is not None and missing.error.code == "BadManagedImageSource"
    version = template(
        source={"type": "SharedImageVersion", "imageVersionId": f"/subscriptions/{SUB}/resourceGroups/rg1/"
                "providers/Microsoft.Compute/galleries/g/images/i/versions/latest"}
    )  # fmt: skip
    missing = provider.create_template(version, NullLog())
    assert missing.error is not None and missing.error.code == "BadSharedImageVersionSource"
    assert not (tmp_path / "staging").exists() or not any((tmp_path / "staging").rglob("staging.json"))


def test_a_mapped_source_is_recorded_as_what_it_really_is(tmp_path: Path) -> None:
    catalog_file = tmp_path / "catalog.json"
    catalog_file.write_text('{"Canonical:ubuntu-24_04-lts:server": "busybox"}')
    provider = LocalProvider(state_dir=tmp_path, environ={"IMAGEBUILDER_LOCAL_CATALOG": str(catalog_file)})
    mapped = template()
    mapped.template["properties"]["source"].update(
        publisher="Canonical", offer="ubuntu-24_04-lts", sku="server"
    )
    assert provider.create_template(mapped, NullLog()).status == "succeeded"
    build = BuildInput(
        run=RunRef(subscription_id=SUB, resource_group="rg1", template_name="t1", run_id="r1"),
        template=mapped.template,
    )
    source = provider._resolve_source(build)
    assert source.id == "Canonical:ubuntu-24_04-lts:server:latest"
    assert (
        source.details["mapped"] is True and source.details["localBase"] == "ImageBuilderLocal:busybox:stable"
    )
    assert source.details["builtFrom"].startswith(
        "Canonical:ubuntu-24_04-lts:server mapped by IMAGEBUILDER_LOCAL_CATALOG"
    )
    plain = provider._resolve_source(BuildInput(run=build.run, template=template().template))
    assert plain.details["mapped"] is False and "(local base)" in plain.details["builtFrom"]
