"""Event-driven builds on the real local runtime, Azurite and the local provider: blob uploads of
templates, replaced scripts, Schedule and SourceImage triggers, lifecycle events and the sweeper."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import pytest

from examples.demo import DemoError
from imagebuilder.pipeline import events as ev
from imagebuilder.pipeline.messages import RunRef
from imagebuilder.providers.local.layout import RunLayout
from tests.triggers.conftest import RG, SUB, Env, template

pytestmark = pytest.mark.slow

ARTIFACTS = "image-artifacts"
UPLOADS = "image-templates"


def _result(env: Env, path: str) -> dict[str, Any]:
    return dict(json.loads(env.read_blob(UPLOADS, path)))


def _run_types(env: Env, run_id: str) -> list[str]:
    return [
        e["type"].rsplit(".", 1)[-1] + (f":{e['data'].get('runSubState')}" if "Phase" in e["type"] else "")
        for e in env.drain_events()
        if e.get("data", {}).get("runId") == run_id
    ]


def test_bad_uploads_give_an_error_result_and_no_template(env: Env) -> None:
    bad = template()
    del bad["properties"]["distribute"]
    env.upload(UPLOADS, f"{SUB}/{RG}/badtemplate.json", json.dumps(bad))
    env.upload(UPLOADS, "notjson.json", "{not json")
    deployment = {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "resources": [
            {
                "type": "Microsoft.VirtualMachineImages/imageTemplates",
                "apiVersion": "2022-02-14",
                "name": "armtemplate",
                "location": "[resourceGroup().location]",
                **{k: v for k, v in template().items() if k != "location"},
            }
        ],
    }
    env.upload(UPLOADS, f"{RG}/armtemplate.json", json.dumps(deployment))

    result = _result(env, f"{SUB}/{RG}/badtemplate.result.json")
    assert result["status"] == "Failed"
    assert result["error"]["code"] == "MissingRequiredProperty"
    assert result["error"]["target"] == "properties.distribute"
    assert _result(env, "notjson.result.json")["error"]["code"] == "InvalidRequestContent"
    arm = _result(env, f"{RG}/armtemplate.result.json")
    assert arm["error"]["code"] == "InvalidTemplate" and "resourceGroup()" in arm["error"]["message"]
    for name in ("badtemplate", "notjson", "armtemplate"):
        assert env.api.request("GET", env.api.template_path(name)).status == 404
    # result files are never taken for uploads
    names = [b.name for b in env.blobs.get_container_client(UPLOADS).list_blobs()]
    assert not [n for n in names if n.endswith(".result.result.json")]


def test_upload_goes_through_the_create_checks(env: Env) -> None:
    """An uploaded template is created as a PUT creates it: a source with no local base fails its create
    (the result file says why, the template stays Failed); unknown members are warnings in the result."""
    missing = template()
    missing["properties"]["source"] = {
        "type": "PlatformImage",
        "publisher": "Canonical",
        "offer": "ubuntu-24_04-lts",
        "sku": "server",
        "version": "latest",
    }
    env.upload(UPLOADS, f"{SUB}/{RG}/nobase.json", json.dumps(missing))
    result = _result(env, f"{SUB}/{RG}/nobase.result.json")
    assert result["status"] == "Failed" and result["error"]["code"] == "BadPIRSource", result
    assert "IMAGEBUILDER_LOCAL_CATALOG" in result["error"]["message"]
    assert env.api.get_template("nobase")["properties"]["provisioningState"] == "Failed"
    env.api.delete_template("nobase")
    odd = template()
    odd["properties"]["vmProfile"] = {"vmSize": "Standard_D2s_v3", "tags": {"team": "x"}}
    env.upload(UPLOADS, f"{SUB}/{RG}/oddmember.json", json.dumps(odd))
    result = _result(env, f"{SUB}/{RG}/oddmember.result.json")
    assert result["status"] == "Accepted", result
    assert result["warnings"] == ["ignored unknown member properties.vmProfile.tags"]
    assert env.api.get_template("oddmember")["properties"]["provisioningState"] == "Succeeded"
    env.wait_done("oddmember", result["runId"])


def test_upload_builds_a_replaced_script_rebuilds_and_events_arrive_in_order(env: Env) -> None:
    script_v1 = "#!/bin/sh\necho v1 | sudo tee /etc/release-note\n"
    url = env.upload(ARTIFACTS, "scripts/note.sh", script_v1, public=True)
    body = template(customize=[{"type": "Shell", "name": "note", "scriptUri": url}])
    deployment = {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {"imageTemplateName": {"type": "string", "defaultValue": "scripted"}},
        "resources": [
            {
                "type": "Microsoft.VirtualMachineImages/imageTemplates",
                "apiVersion": "2022-02-14",
                "name": "[parameters('imageTemplateName')]",
                **body,
            }
        ],
    }
    env.upload(UPLOADS, f"{SUB}/{RG}/scripted.json", json.dumps(deployment))
    result = _result(env, f"{SUB}/{RG}/scripted.result.json")
    assert result["status"] == "Accepted", result
    first = env.wait_done("scripted", result["runId"])
    assert first["properties"]["details"]["trigger"]["kind"] == "Upload"

    # replacing the script starts a build (the fingerprint changed) ...
    script_v2 = "#!/bin/sh\necho v2 | sudo tee /etc/release-note\n"
    env.upload(ARTIFACTS, "scripts/note.sh", script_v2, public=True)

    def builds(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            r
            for r in rs
            if r["properties"]["details"].get("trigger", {}).get("kind") == "ArtifactChanged"
            and not r["properties"]["message"].startswith("Skipped:")
        ]

    def skips(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [r for r in rs if r["properties"]["message"].startswith("Skipped:")]

    runs = env.wait_runs("scripted", lambda rs: bool(builds(rs)), "a build after the script changed")
    second = env.wait_done("scripted", builds(runs)[0]["name"])
    sha = hashlib.sha256(script_v2.encode()).hexdigest()
    assert [a["sha256"] for a in second["properties"]["details"]["artifacts"]] == [sha]

    # ... the same content uploaded again does not (a skipped run says why)
    seen = len(skips(env.runs("scripted")))
    env.upload(ARTIFACTS, "scripts/note.sh", script_v2, public=True)
    runs = env.wait_runs("scripted", lambda rs: len(skips(rs)) > seen, "a skipped run after the same script")
    assert len(builds(runs)) == 1
    skipped_run = skips(runs)[-1]
    skipped = skipped_run["properties"]
    assert skipped["runState"] == "Canceled"
    assert "unchanged since run " + second["name"] in skipped["message"]
    assert skipped["details"]["skipped"]["fingerprint"]
    assert skipped["details"]["trigger"]["kind"] == "ArtifactChanged"

    # lifecycle events of the second run, in order
    types = _run_types(env, second["name"])
    assert types[0] == "RunStarted", types
    phases = [t for t in types if t.startswith("RunPhaseChanged")]
    assert phases == [
        "RunPhaseChanged:Building",
        "RunPhaseChanged:Customizing",
        "RunPhaseChanged:Distributing",
    ]
    assert types.index("ReplicationFinished") > types.index("RunPhaseChanged:Distributing")
    assert types[-1] == "RunSucceeded"
    mine = [e for e in env.events if e.get("data", {}).get("runId") == second["name"]]
    assert [e["sequence"] for e in mine] == sorted(e["sequence"] for e in mine)
    one = next(e for e in env.events if e["type"] == ev.RUN_STARTED and e["data"]["runId"] == second["name"])
    assert one["specversion"] == "1.0" and one["source"].endswith("/imageTemplates/scripted")
    assert one["subject"] == f"runs/{second['name']}" and one["time"].endswith("Z")
    assert "RunSkipped" in _run_types(env, skipped_run["name"])


def test_schedule_with_unchanged_inputs_records_a_skipped_run(env: Env) -> None:
    env.api.put_template("scheduled", template())
    env.trigger(
        "scheduled",
        "nightly",
        {"properties": {"kind": "Schedule", "schedule": "*/4 * * * * *", "timeZone": "Europe/Paris",
                        "onlyWhenInputsChanged": True}},
    )  # fmt: skip
    runs = env.wait_runs("scheduled", lambda rs: len(rs) >= 1, "the first scheduled build")
    env.wait_done("scheduled", runs[0]["name"])
    runs = env.wait_runs(
        "scheduled",
        lambda rs: any(r["properties"]["message"].startswith("Skipped:") for r in rs),
        "a skipped scheduled run",
    )
    skipped = next(r for r in runs if r["properties"]["message"].startswith("Skipped:"))["properties"]
    assert skipped["runState"] == "Canceled"
    assert f"inputs unchanged since run {runs[0]['name']}" in skipped["message"]
    assert skipped["details"]["trigger"]["kind"] == "Schedule"
    status = env.get_trigger("scheduled", "nightly")["properties"]["status"]
    assert status["code"] == "Healthy", status
    env.api.request("DELETE", env.api.template_path("scheduled") + "/triggers/nightly")


def test_source_image_trigger_builds_when_latest_changes(env: Env) -> None:
    gallery_image = f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/triggerGallery/images/base"
    base = template(
        distribute=[
            {
                "type": "SharedImage",
                "runOutputName": "base",
                "galleryImageId": gallery_image,
                "targetRegions": [{"name": "westeurope"}],
            }
        ]
    )
    env.api.put_template("base", base)
    env.api.run("base")
    assert env.api.watch("base", timeout=120, interval=0.5)["runState"] == "Succeeded"
    v1 = env.api.run_outputs("base")[0]["properties"]["artifactId"].rsplit("/", 1)[-1]

    app = template()
    app["properties"]["source"] = {
        "type": "SharedImageVersion",
        "imageVersionId": f"{gallery_image}/versions/latest",
    }
    env.api.put_template("app", app)
    env.trigger("app", "onNewBase", {"properties": {"kind": "SourceImage"}})
    runs = env.wait_runs("app", lambda rs: len(rs) >= 1, "a first build (nothing built yet)")
    first = env.wait_done("app", runs[0]["name"])
    assert first["properties"]["details"]["trigger"]["sourceVersion"] == v1

    env.api.run("base")
    assert env.api.watch("base", timeout=120, interval=0.5)["runState"] == "Succeeded"
    v2 = env.api.run_outputs("base")[0]["properties"]["artifactId"].rsplit("/", 1)[-1]
    assert v2 != v1
    runs = env.wait_runs("app", lambda rs: len(rs) >= 2, "a build for the new base version")
    assert len(runs) == 2, "no build may start while the source version stays the same"
    second = env.wait_done("app", runs[1]["name"])
    trigger = second["properties"]["details"]["trigger"]
    assert (trigger["kind"], trigger["sourceVersion"], trigger["previousVersion"]) == ("SourceImage", v2, v1)
    assert second["properties"]["details"]["source"]["exact_version"] == v2
    time.sleep(4)  # two more evaluations: the image is current, nothing starts
    assert len(env.runs("app")) == 2
    status = env.get_trigger("app", "onNewBase")["properties"]["status"]
    assert status["code"] == "Healthy" and v2 in status["message"], status


def test_trigger_disabled_after_repeated_failures(env: Env) -> None:
    broken = template()
    broken["properties"]["source"] = {
        "type": "SharedImageVersion",
        "imageVersionId": f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/"
        "nowhere/images/missing/versions/latest",
    }
    # its create fails as AIB's does (the source does not exist); the template stays, Failed
    created = env.api.request("PUT", env.api.template_path("broken"), broken)
    assert created.status == 201
    with pytest.raises(DemoError, match="BadSharedImageVersionSource"):
        env.api.wait_operation(created, "creating template broken")
    assert env.api.get_template("broken")["properties"]["provisioningState"] == "Failed"
    env.trigger("broken", "onNewBase", {"properties": {"kind": "SourceImage"}})
    deadline = time.monotonic() + 60
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = env.get_trigger("broken", "onNewBase")["properties"]["status"]
        if status["code"] == "Disabled":
            break
        time.sleep(0.5)
    assert status["code"] == "Disabled", status
    assert "3 consecutive failures" in status["message"] and "missing" in status["message"]
    assert env.runs("broken") == []
    # PUT again re-enables it: counting starts over
    assert (
        env.trigger("broken", "onNewBase", {"properties": {"kind": "SourceImage"}})["properties"]["status"][
            "code"
        ]
        == "Healthy"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = env.get_trigger("broken", "onNewBase")["properties"]["status"]
        if status["code"] != "Healthy":
            break
        time.sleep(0.5)
    assert status["code"] == "Unhealthy" and "evaluation failed" in status["message"], status


def test_sweeper_removes_a_planted_orphan_and_nothing_else(env: Env) -> None:
    runs_dir = env.provider_state / "local" / "runs"
    orphan = runs_dir / "gone-template-20260101000000-deadbeef-0123456789"
    (orphan / "build" / "root" / "etc").mkdir(parents=True)
    (orphan / "build" / "root" / "etc" / "motd").write_text("left behind\n")
    young = runs_dir / "just-now-0123456789"  # no owner yet, but too young to judge
    young.mkdir(parents=True)
    # a run still in progress (recorded, its folder present): never touched
    env.api.put_template("busy", template())
    ref = RunRef(
        subscription_id=SUB, resource_group=RG, template_name="busy", run_id="20260101000000-busy0001"
    )
    env.store.runs.create(ref, template_snapshot=env.api.get_template("busy"))
    active = RunLayout.for_run(env.provider_state, ref).run_dir
    (active / "staging").mkdir(parents=True)
    old = time.time() - 3600
    for folder in (orphan, active):
        os.utime(folder, (old, old))
    try:
        deadline = time.monotonic() + 60
        while orphan.exists() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not orphan.exists(), env.runtime.tail(30)
        assert active.is_dir() and (active / "staging").is_dir()
        assert young.is_dir()
        time.sleep(1)
        sweeps = [e for e in env.drain_events() if e["type"] == ev.SWEEP_REMOVED]
        removed = [line for e in sweeps for line in e["data"]["removed"]]
        assert any(orphan.name in line for line in removed), removed
        assert not any(active.name in line or young.name in line for line in removed)
    finally:
        env.store.runs.set_status(ref, run_state="Canceled", message="test over")
        young.rmdir()


def test_failed_and_canceled_runs_publish_their_end(env: Env) -> None:
    failing = template(
        customize=[{"type": "Shell", "name": "breaks", "inline": ["echo about to fail", "exit 3"]}]
    )
    slow = template(customize=[{"type": "Shell", "name": "waits", "inline": ["sleep 60"]}])
    env.api.put_template("failing", failing)
    env.api.put_template("slow", slow)
    env.api.run("failing")
    env.api.run("slow")
    env.wait_runs(
        "slow",
        lambda rs: bool(rs) and rs[-1]["properties"].get("runSubState") == "Customizing",
        "the slow build to customize",
    )
    env.api.cancel("slow")
    assert env.api.watch("failing", timeout=120, interval=0.5)["runState"] == "Failed"
    assert env.api.watch("slow", timeout=120, interval=0.5)["runState"] == "Canceled"
    failed_id = env.runs("failing")[-1]["name"]
    canceled_id = env.runs("slow")[-1]["name"]
    failed = _run_types(env, failed_id)
    assert failed[0] == "RunStarted" and failed[-1] == "RunFailed", failed
    assert "ReplicationFinished" not in failed
    end = next(e for e in env.events if e["type"] == ev.RUN_FAILED and e["data"]["runId"] == failed_id)
    assert (
        end["data"]["error"]["step"]
        and "exit" in (end["data"]["message"] + str(end["data"]["error"])).lower()
    )
    canceled = _run_types(env, canceled_id)
    assert canceled[-1] == "RunCanceled", canceled
    assert canceled.index("RunPhaseChanged:Customizing") < canceled.index("RunCanceled")


def test_upload_of_a_changed_template_updates_it_in_place_with_its_triggers(env: Env) -> None:
    env.upload(UPLOADS, "updatable.json", json.dumps(template()))
    first = _result(env, "updatable.result.json")
    assert (first["status"], first["template"]) == ("Accepted", "created"), first
    sub_rg = first["templateId"].split("/providers/")[0]
    assert sub_rg == f"/subscriptions/{SUB}/resourceGroups/image-templates"
    api = type(env.api)(env.api.base_url, env.api.key, resource_group="image-templates")
    assert api.watch("updatable", timeout=120, interval=0.5)["runState"] == "Succeeded"

    changed = template(
        customize=[{"type": "Shell", "name": "motd2", "inline": ["echo changed | sudo tee /etc/motd"]}]
    )
    deployment = {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "variables": {"when": "0 0 0 1 1 *"},
        "resources": [
            {
                "type": "Microsoft.VirtualMachineImages/imageTemplates",
                "apiVersion": "2024-02-01",
                "name": "updatable",
                **changed,
                "resources": [
                    {
                        "type": "triggers",
                        "apiVersion": "2024-02-01",
                        "name": "yearly",
                        "properties": {"kind": "Schedule", "schedule": "[variables('when')]"},
                    }
                ],
            }
        ],
    }
    env.blobs.get_blob_client(UPLOADS, "updatable.result.json").delete_blob()
    env.upload(UPLOADS, "updatable.json", json.dumps(deployment))
    second = _result(env, "updatable.result.json")
    assert second["status"] == "Accepted", second
    assert (second["template"], second["triggers"]) == ("updated", ["yearly"])
    assert second["runId"] != first["runId"]
    body = api.get_template("updatable")
    assert body["properties"]["customize"][0]["name"] == "motd2"
    trigger = api.request("GET", api.template_path("updatable") + "/triggers/yearly").body
    assert trigger["properties"]["schedule"] == "0 0 0 1 1 *"
    assert api.watch("updatable", timeout=120, interval=0.5)["runState"] == "Succeeded"
    assert [r["name"] for r in api.runs("updatable")] == [first["runId"], second["runId"]]


def test_automation_state_of_deleted_templates_is_pruned(env: Env) -> None:
    from imagebuilder.store.automation import TriggerState, open_automation

    auto = open_automation(env.connection)
    env.api.put_template("prunable", template())
    env.trigger("prunable", "yearly", {"properties": {"kind": "Schedule", "schedule": "0 0 0 1 1 *"}})
    trigger = env.store.triggers.get(SUB, RG, "prunable", "yearly")
    assert trigger is not None
    auto.save_trigger_state(trigger, TriggerState({**auto.trigger_state(trigger).data, "failures": 1}))
    auto.mark_pending(SUB, RG, "long-gone", {"kind": "ArtifactChanged", "uri": "http://x/y"})
    live = set(auto.template_keys())
    assert (SUB, RG, "prunable") in live and (SUB, RG, "long-gone") not in live
    auto.prune(live)  # the sweeper timer may have pruned it already: only the outcome counts
    assert "long-gone" not in [p[2] for p in auto.pending()]
    assert auto.trigger_state(trigger).data.get("failures") == 1
