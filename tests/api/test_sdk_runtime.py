"""The official azure-mgmt-imagebuilder client against the local runtime (+ Azurite): create, get, list
with paging, update, run and poll, runOutputs, cancel, delete, triggers; and the run/cancel examples of
the spec over raw HTTP. The `build_image` here is the test app's small real orchestration."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.mgmt.imagebuilder import ImageBuilderClient
from azure.mgmt.imagebuilder import models as m

from api._arm import store as api_store
from examples.sdk_client import make_client
from imagebuilder.pipeline.messages import RunRef
from tests.api.conftest import Direct, Runtime, minimal_template

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "spec" / "examples"
RG = "sdk-rg"


@pytest.fixture
def sub() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def client(runtime: Runtime, sub: str) -> Iterator[ImageBuilderClient]:
    with make_client(runtime.url, runtime.key, sub, polling_interval=0.2) as c:
        yield c


def model_template(**tags: str) -> m.ImageTemplate:
    return m.ImageTemplate(
        location="westus",
        tags=dict(tags) or None,
        identity=m.ImageTemplateIdentity(
            type="UserAssigned",
            user_assigned_identities={
                "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg1/providers/"
                "Microsoft.ManagedIdentity/userAssignedIdentities/identity_1": m.UserAssignedIdentity()
            },
        ),
        properties=m.ImageTemplateProperties(
            source=m.ImageTemplatePlatformImageSource(
                publisher="Canonical",
                offer="0001-com-ubuntu-server-jammy",
                sku="22_04-lts-gen2",
                version="latest",
            ),
            customize=[m.ImageTemplateShellCustomizer(name="hello", inline=["echo hello"])],
            distribute=[m.ImageTemplateVhdDistributor(run_output_name="vhd1")],
        ),
    )


def test_create_get_list_pages_update_delete(client: ImageBuilderClient) -> None:
    ops = client.virtual_machine_image_templates
    pollers = [ops.begin_create_or_update(RG, f"tmpl{i}", model_template()) for i in range(4)]
    created = [p.result() for p in pollers]
    assert [t.name for t in created] == ["tmpl0", "tmpl1", "tmpl2", "tmpl3"]
    assert all(t.provisioning_state == "Succeeded" for t in created)
    other = ops.begin_create_or_update("other-rg", "x", model_template()).result()
    assert other.id.endswith(
        "/resourceGroups/other-rg/providers/Microsoft.VirtualMachineImages/imageTemplates/x"
    )

    got = ops.get(RG, "TMPL1")
    assert isinstance(got.properties.source, m.ImageTemplatePlatformImageSource)
    assert got.properties.source.offer == "0001-com-ubuntu-server-jammy"
    assert got.properties.customize[0].inline == ["echo hello"]
    assert got.last_run_status is None and got.system_data.created_at is not None

    pages = [list(page) for page in ops.list_by_resource_group(RG).by_page()]
    assert [len(p) for p in pages] == [3, 1], "page size 3: the SDK followed nextLink"
    assert sorted(t.name for p in pages for t in p) == ["tmpl0", "tmpl1", "tmpl2", "tmpl3"]
    assert sorted(t.name for t in ops.list()) == ["tmpl0", "tmpl1", "tmpl2", "tmpl3", "x"]

    same = ops.begin_create_or_update(RG, "tmpl0", model_template()).result()
    assert same.name == "tmpl0"
    changed = model_template()
    changed.properties.customize[0].inline = ["echo changed"]
    with pytest.raises(HttpResponseError) as info:
        ops.begin_create_or_update(RG, "tmpl0", changed)
    assert info.value.status_code == 409 and "not supported" in str(info.value.message)

    updated = ops.begin_update(RG, "tmpl0", m.ImageTemplateUpdateParameters(tags={"team": "images"})).result()
    assert updated.tags == {"team": "images"}
    assert ops.get(RG, "tmpl0").tags == {"team": "images"}
    vm = ops.begin_update(
        RG,
        "tmpl0",
        m.ImageTemplateUpdateParameters(
            properties=m.ImageTemplateUpdateParametersProperties(
                vm_profile=m.ImageTemplateVmProfile(vm_size="Standard_D4s_v3")
            )
        ),
    ).result()
    assert vm.properties.vm_profile.vm_size == "Standard_D4s_v3"

    for i in range(4):
        assert ops.begin_delete(RG, f"tmpl{i}").result() is None
    with pytest.raises(ResourceNotFoundError):
        ops.get(RG, "tmpl0")
    ops.begin_delete(RG, "tmpl0").result()  # absent: 204, still fine
    assert [t.name for t in ops.list()] == ["x"]


def test_bad_template_through_the_sdk(client: ImageBuilderClient) -> None:
    bad = model_template()
    bad.properties.customize[0].script_uri = "https://example.com/also.sh"
    with pytest.raises(HttpResponseError) as info:
        client.virtual_machine_image_templates.begin_create_or_update(RG, "bad", bad)
    assert info.value.status_code == 400
    assert info.value.error.target == "properties.customize[0].inline"
    with pytest.raises(ResourceNotFoundError):
        client.virtual_machine_image_templates.get(RG, "bad")


def test_run_poll_outputs_and_every_run_kept(client: ImageBuilderClient, runtime: Runtime, sub: str) -> None:
    ops = client.virtual_machine_image_templates
    ops.begin_create_or_update(RG, "builds", model_template(**{"test.seconds": "2"})).result()
    poller = ops.begin_run(RG, "builds")
    running = ops.get(RG, "builds").last_run_status
    assert running.run_state in ("Running", "Succeeded")
    with pytest.raises(HttpResponseError) as info:
        ops.begin_run(RG, "builds")  # one run at a time
    assert info.value.status_code == 409
    with pytest.raises(HttpResponseError) as info:
        ops.begin_delete(RG, "builds")  # not while it builds
    assert info.value.status_code == 409
    assert poller.result() is None and poller.status() == "Succeeded"
    status = ops.get(RG, "builds").last_run_status
    assert status.run_state == "Succeeded" and status.start_time and status.end_time

    outputs = list(ops.list_run_outputs(RG, "builds"))
    assert [(o.name, o.properties.provisioning_state) for o in outputs] == [("vhd1", "Succeeded")]
    one = ops.get_run_output(RG, "builds", "vhd1")
    assert one.properties.artifact_uri.endswith(".vhd")
    assert one.type == "Microsoft.VirtualMachineImages/imageTemplates/runOutputs"

    ops.begin_run(RG, "builds").result()  # a second run: both kept (beyond AIB)
    headers = {"x-functions-key": runtime.key}
    base = f"{runtime.url}/subscriptions/{sub}/resourceGroups/{RG}/providers/Microsoft.VirtualMachineImages"
    runs = requests.get(
        f"{base}/imageTemplates/builds/runs?api-version=2025-10-01", headers=headers, timeout=30
    )
    assert runs.status_code == 200
    kept = runs.json()["value"]
    assert [r["properties"]["runState"] for r in kept] == ["Succeeded", "Succeeded"]
    assert all(r["properties"]["outputs"][0]["name"] == "vhd1" for r in kept)
    log = requests.get(
        kept[0]["properties"]["logs"]["customization.log"] + "?api-version=2025-10-01",
        headers=headers,
        timeout=30,
    )
    assert log.status_code == 200 and "test build step: Building" in log.text
    assert "sig=" not in kept[0]["properties"]["logUri"]


def test_failed_run_reports_the_error(client: ImageBuilderClient) -> None:
    ops = client.virtual_machine_image_templates
    ops.begin_create_or_update(
        RG, "fails", model_template(**{"test.seconds": "0", "test.outcome": "Failed"})
    ).result()
    with pytest.raises(HttpResponseError) as info:
        ops.begin_run(RG, "fails").result()
    assert "customize[0] failed" in str(info.value)
    status = ops.get(RG, "fails").last_run_status
    assert status.run_state == "Failed" and "exit 3" in status.message


def test_cancel_a_running_build(client: ImageBuilderClient) -> None:
    ops = client.virtual_machine_image_templates
    ops.begin_create_or_update(RG, "slow", model_template(**{"test.seconds": "600"})).result()
    run = ops.begin_run(RG, "slow")
    deadline = time.monotonic() + 30
    while ops.get(RG, "slow").last_run_status.run_sub_state != "Building":
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.2)
    assert ops.begin_cancel(RG, "slow").result() is None
    status = ops.get(RG, "slow").last_run_status
    assert status.run_state == "Canceled" and status.end_time
    with pytest.raises(HttpResponseError):
        run.result()  # the run's operation ended Canceled
    with pytest.raises(HttpResponseError) as info:
        ops.begin_cancel(RG, "slow")
    assert info.value.status_code == 409
    ops.begin_delete(RG, "slow").result()


def test_auto_run_starts_a_build_on_create(client: ImageBuilderClient) -> None:
    ops = client.virtual_machine_image_templates
    template = model_template(**{"test.seconds": "0"})
    template.properties.auto_run = m.ImageTemplateAutoRun(state="Enabled")
    ops.begin_create_or_update(RG, "auto", template).result()
    deadline = time.monotonic() + 30
    while True:
        status = ops.get(RG, "auto").last_run_status
        if status is not None and status.run_state == "Succeeded":
            break
        assert time.monotonic() < deadline, f"autoRun did not finish a build: {status}"
        time.sleep(0.3)


def test_triggers_through_the_sdk(client: ImageBuilderClient) -> None:
    client.virtual_machine_image_templates.begin_create_or_update(RG, "trig", model_template()).result()
    trigger = client.triggers.begin_create_or_update(
        RG, "trig", "source", m.Trigger(properties=m.SourceImageTriggerProperties())
    ).result()
    assert trigger.properties.kind == "SourceImage" and trigger.properties.status.code == "Healthy"
    assert [t.name for t in client.triggers.list_by_image_template(RG, "trig")] == ["source"]
    assert client.triggers.get(RG, "trig", "source").properties.provisioning_state == "Succeeded"
    client.triggers.begin_delete(RG, "trig", "source").result()
    with pytest.raises(ResourceNotFoundError):
        client.triggers.get(RG, "trig", "source")


def _example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return data


def test_run_and_cancel_examples_over_http(runtime: Runtime, sub: str) -> None:
    headers = {"x-functions-key": runtime.key}
    run_ex, cancel_ex = _example("RunImageTemplate.json"), _example("CancelImageBuild.json")
    p = run_ex["parameters"]
    base = (
        f"{runtime.url}/subscriptions/{sub}/resourceGroups/{p['resourceGroupName']}/providers/"
        f"Microsoft.VirtualMachineImages/imageTemplates/{p['imageTemplateName']}"
    )
    q = f"?api-version={p['api-version']}"
    body = minimal_template()
    body["tags"] = {"test.seconds": "600"}
    assert requests.put(base + q, json=body, headers=headers, timeout=30).status_code == 201
    run = requests.post(base + "/run" + q, headers=headers, timeout=30)
    assert str(run.status_code) in run_ex["responses"] and run.status_code == 202
    for header in run_ex["responses"]["202"]["headers"]:
        assert header in run.headers
    status = requests.get(run.headers["Azure-AsyncOperation"], headers=headers, timeout=30).json()
    assert status["status"] == "InProgress" and set(status) >= {"id", "name", "status", "startTime"}
    pending = requests.get(run.headers["Location"], headers=headers, timeout=30, allow_redirects=False)
    assert pending.status_code == 202 and pending.headers["Retry-After"]
    cancel = requests.post(base + "/cancel" + q, headers=headers, timeout=30)
    assert str(cancel.status_code) in cancel_ex["responses"] and cancel.status_code == 202
    for header in cancel_ex["responses"]["202"]["headers"]:
        assert header in cancel.headers
    deadline = time.monotonic() + 30
    while (s := requests.get(cancel.headers["Azure-AsyncOperation"], headers=headers, timeout=30).json())[
        "status"
    ] == "InProgress":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert s["status"] == "Succeeded" and s["endTime"]
    final = requests.get(run.headers["Azure-AsyncOperation"], headers=headers, timeout=30).json()
    assert final["status"] == "Canceled" and final["error"]["code"] == "Canceled"
    no_key = requests.get(base + q, timeout=30)
    assert no_key.status_code == 401


def _orphan_run(sub: str, name: str, *, age: timedelta) -> RunRef:
    """A run recorded (Queued) whose orchestration was never started: the API process died in between."""
    st = api_store()
    stored = st.templates.get(sub, RG, name)
    assert stored is not None
    ref = RunRef(
        subscription_id=sub, resource_group=RG, template_name=name, run_id=f"orphan-{uuid.uuid4().hex[:6]}"
    )
    st.runs.create(ref, template_snapshot=stored.resource)
    if age:
        table = st.runs._runs.client  # backdate it, as if the crash happened long ago
        entity = table.get_entity(*st.runs._keys(ref))
        entity["CreatedTime"] = (datetime.now(UTC) - age).isoformat()
        table.update_entity(entity, mode=UpdateMode.MERGE)
    return ref


def test_a_run_that_never_started_does_not_block_the_template(
    client: ImageBuilderClient, direct: Direct, sub: str
) -> None:
    ops = client.virtual_machine_image_templates
    ops.begin_create_or_update(RG, "orphans", model_template(**{"test.seconds": "0"})).result()
    fresh = _orphan_run(sub, "orphans", age=timedelta(0))
    with pytest.raises(HttpResponseError) as info:
        ops.begin_run(RG, "orphans")  # it may still be starting: refused
    assert info.value.status_code == 409
    ops.begin_cancel(RG, "orphans").result()  # the host does not know it: canceled at once
    assert api_store().runs.get(fresh).run_state == "Canceled"

    old = _orphan_run(sub, "orphans", age=timedelta(hours=1))
    ops.begin_run(RG, "orphans").result()  # the old orphan is settled, the new run goes through
    assert api_store().runs.get(old).run_state == "Failed"
    assert ops.get(RG, "orphans").last_run_status.run_state == "Succeeded"


def test_an_older_api_version_client(runtime: Runtime, sub: str) -> None:
    with make_client(runtime.url, runtime.key, sub, polling_interval=0.2, api_version="2022-02-14") as old:
        ops = old.virtual_machine_image_templates
        ops.begin_create_or_update(RG, "legacy", model_template()).result()
        assert ops.get(RG, "legacy").properties.provisioning_state == "Succeeded"
        ops.begin_delete(RG, "legacy").result()
    with make_client(runtime.url, runtime.key, sub, api_version="2099-01-01") as future:
        with pytest.raises(HttpResponseError) as info:
            future.virtual_machine_image_templates.get(RG, "legacy")
        assert info.value.status_code == 400 and info.value.error.code == "NoRegisteredProviderFound"


def test_an_orchestration_that_ends_without_recording_is_settled(client: ImageBuilderClient) -> None:
    ops = client.virtual_machine_image_templates
    tags = {"test.seconds": "0", "test.silent": "1", "test.outcome": "PartiallySucceeded"}
    ops.begin_create_or_update(RG, "silent", model_template(**tags)).result()
    assert ops.begin_run(RG, "silent").result() is None
    status = ops.get(RG, "silent").last_run_status
    assert status.run_state == "PartiallySucceeded" and status.message == "finished without recording"
