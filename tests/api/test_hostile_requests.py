"""Hostile request shapes found by fuzzing from outside, answered as ARM answers them, directly and through
the local runtime: JSON nested 1000 levels deep is a 400 (not a RecursionError 500), a template named `.`
or `..` is InvalidResourceName, a body that is not JSON by its media type is a 415, and nothing is stored."""

from __future__ import annotations

import json

import pytest

from tests.api.conftest import Direct, Http, minimal_template, template_url


def _error(resp_text: str) -> dict[str, object]:
    body = json.loads(resp_text)
    assert set(body) == {"error"}
    error: dict[str, object] = body["error"]
    assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str)
    return error


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize("depth", [100, 1000, 100_000])
def test_deeply_nested_json_is_a_400(
    request: pytest.FixtureRequest, api: Direct | Http, sub: str, method: str, depth: int
) -> None:
    url = template_url(sub, name="deep")
    if method == "PATCH":
        assert api.put(url, minimal_template()).status in (200, 201)
    nested = ('{"tags": ' + '{"a": ' * depth + "1" + "}" * depth + "}").encode()
    resp = api.request(method, url, raw=nested)
    assert resp.status == 400, resp.text
    assert _error(resp.text)["code"] == "InvalidRequestContent"
    assert "nested" in str(_error(resp.text)["message"])
    if method == "PUT":
        assert api.get(url).status == 404


@pytest.mark.parametrize("name", [".", "..", "...."])
def test_dot_names_are_invalid_resource_names(api: Direct | Http, sub: str, name: str) -> None:
    url = template_url(sub, name=name)
    resp = api.put(url, minimal_template())
    # Through HTTP a client's URL normalization may fold `.`/`..` into another route: never a 2xx.
    if isinstance(api, Direct):
        assert resp.status == 400, resp.text
        error = _error(resp.text)
        assert error["code"] == "InvalidResourceName" and error["target"] == "imageTemplateName"
    else:
        assert 400 <= resp.status < 500, resp.text
    listed = api.get(template_url(sub, name="").replace("imageTemplates/?", "imageTemplates?"))
    assert json.loads(listed.text)["value"] == []


@pytest.mark.parametrize("media", ["text/plain", "application/x-www-form-urlencoded", "text/xml"])
def test_non_json_media_type_is_a_415(api: Direct | Http, sub: str, media: str) -> None:
    url = template_url(sub, name="typed")
    resp = api.request("PUT", url, raw=json.dumps(minimal_template()).encode(), content_type=media)
    assert resp.status == 415, resp.text
    error = _error(resp.text)
    assert error["code"] == "UnsupportedMediaType" and media in str(error["message"])
    assert api.get(url).status == 404


@pytest.mark.parametrize("media", ["application/json; charset=utf-8", "application/merge-patch+json"])
def test_json_media_types_are_read(api: Direct | Http, sub: str, media: str) -> None:
    url = template_url(sub, name="typed-ok")
    resp = api.request("PUT", url, raw=json.dumps(minimal_template()).encode(), content_type=media)
    assert resp.status in (200, 201), resp.text


def _steps(count: int, line: str = "true") -> list[dict[str, object]]:
    return [{"type": "Shell", "name": f"s{i}", "inline": [line]} for i in range(count)]


def test_step_count_limit_is_stated_and_enforced_at_put(direct: Direct, sub: str) -> None:
    ok = direct.put(template_url(sub, name="hundred"), minimal_template(customize=_steps(100)))
    assert ok.status in (200, 201), ok.text
    url = template_url(sub, name="thousand")
    resp = direct.put(url, minimal_template(customize=_steps(1000)))
    assert resp.status == 400, resp.text
    error = _error(resp.text)
    detail = (error.get("details") or [error])[0]  # type: ignore[index]
    assert detail["target"] == "properties.customize" and "at most 100" in detail["message"]
    assert direct.get(url).status == 404


def test_steps_times_template_size_is_bounded(direct: Direct, sub: str) -> None:
    """60 steps each carrying a 1.5 MB template would keep ~90 MiB of step inputs in the run's history."""
    steps = [*_steps(59), {"type": "Shell", "name": "big", "inline": ["#" * 1_500_000]}]
    url = template_url(sub, name="heavy")
    resp = direct.put(url, minimal_template(customize=steps))
    assert resp.status == 400, resp.text
    assert "scriptUri" in resp.text and "MiB" in resp.text
    assert direct.get(url).status == 404
