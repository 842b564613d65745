"""The step cache through the REST API on the local runtime: after a change to the third of three
customizers (in another template: AIB templates cannot be updated) only that step runs again; the run record and customization.log say which steps were cache
hits (with their ids) and which ran; the shipped VHD carries the change."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import E2E, check_vhd, file_path

pytestmark = pytest.mark.slow


def _template(e2e: E2E, marker: str) -> dict[str, Any]:
    data = e2e.template("busybox-webpage.json")
    props = data["properties"]
    props["customize"].append(
        {"type": "Shell", "name": "marker", "inline": [f"echo {marker} | sudo tee /marker"]}
    )
    props.pop("validate", None)
    props["distribute"] = [d for d in props["distribute"] if d["type"] == "VHD"]
    return data


def test_a_change_to_the_third_customizer_reruns_only_that_step(e2e: E2E) -> None:
    name = "bb-stepcache"
    first = e2e.build(name, _template(e2e, "one"))
    assert first["runState"] == "Succeeded", first
    steps1 = e2e.latest_run(name).details["steps"]
    assert steps1[2]["cache"]["hit"] is False  # (steps 1-2 may be hits: other tests build the same ones)

    name = "bb-stepcache-2"  # templates cannot be updated (AIB); the cache is keyed by content, not name
    second = e2e.build(name, _template(e2e, "two"))
    assert second["runState"] == "Succeeded", second
    record = e2e.latest_run(name)
    steps2 = record.details["steps"]
    assert [s["name"] for s in steps2] == [s["name"] for s in steps1]
    assert [s["cache"]["hit"] for s in steps2] == [True, True, False]
    assert [s["cache"]["id"] for s in steps2[:2]] == [s["cache"]["id"] for s in steps1[:2]]
    log = e2e.log_text(name)
    assert f"cache hit {steps2[0]['cache']['id']}" in log and "ran in" in log

    outputs = {o["name"]: o["properties"] for o in e2e.api.run_outputs(name)}
    vhd = check_vhd(file_path(outputs["busybox-vhd"]["artifactUri"]))
    assert vhd.read("/marker") == b"two\n"
    page = vhd.read("/srv/www/index.html")
    assert page is not None and b"Hello from a golden image" in page  # from the cached steps
    e2e.assert_no_leaks()
