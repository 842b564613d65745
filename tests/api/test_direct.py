"""The ARM surface called handler by handler (no host): ARM errors, immutability, PATCH, delete, triggers,
async operations, and the store behind them."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from api._arm import store
from tests.api.conftest import API, DEAD_CLIENT, Direct, minimal_template, template_url


def mark_created(sub: str, rg: str = "rg1", name: str = "t1") -> None:
    """Record a template's create as Succeeded (Direct has no durable host to run the create)."""
    st = store()
    stored = st.templates.get(sub, rg, name)
    assert stored is not None
    resource = copy.deepcopy(stored.resource)
    resource["properties"].pop("provisioningError", None)
    resource["properties"]["provisioningState"] = "Succeeded"
    st.templates.replace(sub, rg, name, resource, etag=stored.etag)


def test_api_version_is_required_and_checked(direct: Direct, sub: str) -> None:
    missing = direct.get(template_url(sub).split("?")[0])
    assert missing.status == 400 and missing.json["error"]["code"] == "MissingApiVersionParameter"
    bad = direct.get(template_url(sub, api="2099-01-01"))
    assert bad.status == 400
    assert bad.json["error"]["code"] == "NoRegisteredProviderFound"
    assert "2025-10-01" in bad.json["error"]["message"]
    ops = direct.get("/providers/Microsoft.VirtualMachineImages/operations?api-version=1999-01-01")
    assert ops.status == 400 and ops.json["error"]["code"] == "NoRegisteredProviderFound"
    assert "type 'operations'" in ops.json["error"]["message"]
    garbled = direct.get(template_url(sub, api="latest"))
    assert garbled.status == 400 and garbled.json["error"]["code"] == "InvalidApiVersionParameter"
    old = direct.put(template_url(sub, api="2020-02-14"), minimal_template())
    assert old.status == 201, old.text


def test_create_get_identical_put_and_immutability(direct: Direct, sub: str) -> None:
    created = direct.put(template_url(sub), minimal_template())
    assert created.status == 201, created.text
    body = created.json
    assert body["id"].endswith("/imageTemplates/t1") and body["name"] == "t1"
    assert body["type"] == "Microsoft.VirtualMachineImages/imageTemplates"
    # a long-running operation, as AIB's; with no durable host (Direct) the create cannot be started and
    # fails at once (tests/api/test_template_lifecycle.py follows a real one through the runtime)
    assert body["properties"]["provisioningState"] == "Failed"
    assert body["properties"]["provisioningError"]["provisioningErrorCode"] == "ServerError"
    assert "/locations/westus/operations/" in created.headers["Azure-AsyncOperation"]
    assert created.headers["Retry-After"].isdigit()
    op = direct.get(created.headers["Azure-AsyncOperation"])
    assert op.status == 200 and op.json["status"] == "Failed" and op.json["endTime"]
    assert "could not be started" in op.json["error"]["message"]

    got = direct.get(template_url(sub, name="T1"))
    assert (
        got.status == 200 and got.json["properties"]["source"] == minimal_template()["properties"]["source"]
    )
    assert "lastRunStatus" not in got.json["properties"]

    again = direct.put(template_url(sub), minimal_template())
    assert again.status == 200
    retagged = direct.put(template_url(sub), {**minimal_template(), "tags": {"a": "b"}})
    assert retagged.status == 200 and retagged.json["tags"] == {"a": "b"}

    changed = minimal_template()
    changed["properties"]["customize"][0]["inline"] = ["echo changed"]
    conflict = direct.put(template_url(sub), changed)
    assert conflict.status == 409
    assert "not supported" in conflict.json["error"]["message"]
    assert direct.get(template_url(sub)).json["properties"]["customize"][0]["inline"] == ["echo hello"]


def test_not_found_and_bad_names(direct: Direct, sub: str) -> None:
    missing = direct.get(template_url(sub, name="nope"))
    assert missing.status == 404 and missing.json["error"]["code"] == "ResourceNotFound"
    bad = direct.put(template_url(sub, name="bad name!"), minimal_template())
    assert bad.status == 400 and bad.json["error"]["target"] == "imageTemplateName"
    not_json = direct.put(template_url(sub), raw=b"{not json")
    assert not_json.status == 400 and not_json.json["error"]["code"] == "InvalidRequestContent"
    empty = direct.put(template_url(sub), raw=b"")
    assert empty.status == 400
    assert direct.get(template_url(sub)).status == 404


def test_patch_changes_only_what_aib_allows(direct: Direct, sub: str) -> None:
    direct.put(template_url(sub), minimal_template())
    tagged = direct.patch(template_url(sub), {"tags": {"new-tag": "new-value"}})
    assert tagged.status == 200, tagged.text
    assert tagged.json["tags"] == {"new-tag": "new-value"}
    vm = direct.patch(template_url(sub), {"properties": {"vmProfile": {"vmSize": "Standard_D4s_v3"}}})
    assert vm.status == 200 and vm.json["properties"]["vmProfile"]["vmSize"] == "Standard_D4s_v3"
    assert vm.json["tags"] == {"new-tag": "new-value"}
    refused = direct.patch(template_url(sub), {"properties": {"customize": []}})
    assert refused.status == 400 and refused.json["error"]["target"] == "properties.customize"
    none = direct.patch(template_url(sub), {"identity": {"type": "None"}})
    assert none.status == 200 and none.json["identity"] == {"type": "None"}
    assert direct.patch(template_url(sub, name="nope"), {"tags": {}}).status == 404


def test_list_pages_with_next_link(direct: Direct, sub: str) -> None:
    for i in range(4):
        assert direct.put(template_url(sub, name=f"t{i}"), minimal_template()).status == 201
    assert direct.put(template_url(sub, rg="other", name="x"), minimal_template()).status == 201
    url: str | None = (
        f"/subscriptions/{sub}/providers/Microsoft.VirtualMachineImages/imageTemplates?api-version={API}"
    )
    names: list[str] = []
    pages = 0
    while url:
        page = direct.get(url)
        assert page.status == 200, page.text
        names += [t["name"] for t in page.json["value"]]
        url = page.json.get("nextLink")
        pages += 1
    assert sorted(names) == ["t0", "t1", "t2", "t3", "x"] and pages == 2
    by_rg = direct.get(template_url(sub).split("/t1?")[0] + f"?api-version={API}")
    assert [t["name"] for t in by_rg.json["value"]] == ["t0", "t1", "t2"] and by_rg.json["nextLink"]
    rest = direct.get(by_rg.json["nextLink"])
    assert [t["name"] for t in rest.json["value"]] == ["t3"] and "nextLink" not in rest.json
    rg1 = direct.get(template_url(sub, rg="other").split("/t1?")[0] + f"?api-version={API}")
    assert [t["name"] for t in rg1.json["value"]] == ["x"] and "nextLink" not in rg1.json
    bad = direct.get(
        f"/subscriptions/{sub}/providers/Microsoft.VirtualMachineImages/imageTemplates"
        f"?api-version={API}&$skipToken=garbage"
    )
    assert bad.status == 400


def test_delete_is_an_lro_and_idempotent(direct: Direct, sub: str) -> None:
    direct.put(template_url(sub), minimal_template())
    gone = direct.delete(template_url(sub))
    assert gone.status == 202
    assert "/operationResults/" in gone.headers["Location"]
    assert direct.get(gone.headers["Azure-AsyncOperation"]).json["status"] == "Succeeded"
    result = direct.get(gone.headers["Location"])
    assert result.status == 204
    assert direct.get(template_url(sub)).status == 404
    assert direct.delete(template_url(sub)).status == 204


def test_run_when_the_orchestration_cannot_start(direct: Direct, sub: str) -> None:
    """With no durable host reachable the run is refused with 503 and recorded as Failed, not left Queued."""
    direct.put(template_url(sub), minimal_template())
    mark_created(sub)
    started = direct.post(template_url(sub, suffix="/run"))
    assert started.status == 503, started.text
    assert "Traceback" not in started.text
    status = direct.get(template_url(sub)).json["properties"]["lastRunStatus"]
    assert status["runState"] == "Failed" and "could not be started" in status["message"]
    runs = direct.get(template_url(sub, suffix="/runs")).json["value"]
    assert len(runs) == 1 and runs[0]["properties"]["error"]["code"] == "BuildNotStarted"
    cancel = direct.post(template_url(sub, suffix="/cancel"))
    assert cancel.status == 409
    assert direct.get(template_url(sub, suffix="/runOutputs")).json == {"value": []}
    assert direct.get(template_url(sub, suffix="/runOutputs/vhd1")).status == 404


def test_triggers(direct: Direct, sub: str) -> None:
    assert (
        direct.put(
            template_url(sub, suffix="/triggers/source"), {"properties": {"kind": "SourceImage"}}
        ).status
        == 404
    )
    direct.put(template_url(sub), minimal_template())
    created = direct.put(
        template_url(sub, suffix="/triggers/source"), {"properties": {"kind": "SourceImage"}}
    )
    assert created.status == 201, created.text
    props: dict[str, Any] = created.json["properties"]
    assert props["kind"] == "SourceImage" and props["status"]["code"] == "Healthy"
    assert props["provisioningState"] == "Succeeded"
    assert created.json["type"] == "Microsoft.VirtualMachineImages/imageTemplates/triggers"
    assert (
        direct.put(
            template_url(sub, suffix="/triggers/source"), {"properties": {"kind": "SourceImage"}}
        ).status
        == 200
    )
    bad = direct.put(template_url(sub, suffix="/triggers/t2"), {"properties": {"kind": "Nope"}})
    assert bad.status == 400
    assert [t["name"] for t in direct.get(template_url(sub, suffix="/triggers")).json["value"]] == ["source"]
    assert direct.get(template_url(sub, suffix="/triggers/source")).status == 200
    assert direct.delete(template_url(sub, suffix="/triggers/source")).status == 202
    assert direct.delete(template_url(sub, suffix="/triggers/source")).status == 204
    assert direct.get(template_url(sub, suffix="/triggers/source")).status == 404


def test_concurrent_puts_one_template_wins(direct: Direct, sub: str) -> None:
    """Racing creators of one name: exactly one creates it; identical bodies get 200, different ones 409."""
    import threading

    bodies = []
    for i in range(6):
        body = minimal_template()
        body["properties"]["customize"][0]["inline"] = [f"echo {i % 2}"]
        bodies.append(body)
    results: list[tuple[int, int]] = []
    barrier = threading.Barrier(len(bodies))

    def put(i: int) -> None:
        barrier.wait()
        results.append((i, direct.put(template_url(sub), bodies[i]).status))

    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, status in results if status == 201]
    assert len(winners) == 1, results
    stored = direct.get(template_url(sub)).json["properties"]["customize"][0]["inline"]
    assert stored == bodies[winners[0]]["properties"]["customize"][0]["inline"]
    for i, status in results:
        same = bodies[i]["properties"]["customize"][0]["inline"] == stored
        assert status == (201 if i in winners else 200 if same else 409), results


def test_links_follow_the_front_end(direct: Direct, sub: str) -> None:
    """Behind App Service's TLS front end, operation links use the scheme and host the client used."""
    import json as _json

    import azure.functions as func

    from api.templates import image_templates_delete

    direct.put(template_url(sub), minimal_template())
    req = func.HttpRequest(
        "DELETE",
        f"http://10.0.0.4:80{template_url(sub)}",
        headers={"x-forwarded-proto": "https", "x-forwarded-host": "myapp.azurewebsites.net"},
        params={"api-version": "2025-10-01"},
        route_params={"subscriptionId": sub, "resourceGroupName": "rg1", "imageTemplateName": "t1"},
        body=b"",
    )
    resp = asyncio.run(image_templates_delete(req, client=DEAD_CLIENT))
    assert resp.status_code == 202, _json.loads(resp.get_body() or b"{}")
    assert resp.headers["Location"].startswith("https://myapp.azurewebsites.net/subscriptions/")
    assert resp.headers["Azure-AsyncOperation"].startswith("https://myapp.azurewebsites.net/")


def test_errors_never_leak_internals() -> None:
    import json as _json

    from azure.core.exceptions import ServiceRequestError

    from api._arm import _error_response

    down = _error_response(ServiceRequestError("connection refused to 127.0.0.1:10002"))
    assert down.status_code == 503 and down.headers["Retry-After"]
    assert _json.loads(down.get_body())["error"]["code"] == "ServiceUnavailable"
    bug = _error_response(KeyError("secret-internal-name"))
    body = bug.get_body().decode()
    assert bug.status_code == 500 and "secret-internal-name" not in body and "Traceback" not in body
    assert "Correlation id" in _json.loads(body)["error"]["message"]
