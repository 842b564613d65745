"""The pure parts of event-driven builds: NCRONTAB schedules in time zones, lifecycle events of status
changes, input fingerprints of runs, upload names and ARM deployment templates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from imagebuilder.pipeline import events as ev
from imagebuilder.pipeline.fingerprint import recorded_inputs, same_blob, source_version, uses_blob
from imagebuilder.pipeline.messages import RunRef
from imagebuilder.pipeline.schedule import CronSchedule, ScheduleError, due, time_zone
from tests.triggers.conftest import template
from triggers.uploads import UploadError, coordinates, extract

RUN = RunRef(subscription_id="s", resource_group="rg", template_name="t", run_id="20260101000000-abcd")
NOW = datetime(2026, 11, 27, 4, 50, 3, tzinfo=UTC)  # a Friday


@pytest.mark.parametrize(
    ("expr", "tz", "expected"),
    [
        ("*/5 * * * * *", "UTC", datetime(2026, 11, 27, 4, 50, 5, tzinfo=UTC)),
        ("0 0 3 * * *", "UTC", datetime(2026, 11, 28, 3, 0, tzinfo=UTC)),
        ("0 0 3 * * Mon-Fri", "Europe/Paris", datetime(2026, 11, 30, 2, 0, tzinfo=UTC)),  # Monday 03:00 CET
        ("0 30 9 1 Jan *", "UTC", datetime(2027, 1, 1, 9, 30, tzinfo=UTC)),
        ("0 0 12 * * 0", "America/New_York", datetime(2026, 11, 29, 17, 0, tzinfo=UTC)),  # Sunday noon EST
    ],
)
def test_next_occurrence(expr: str, tz: str, expected: datetime) -> None:
    assert CronSchedule.parse(expr).next_after(NOW, time_zone(tz)) == expected


def test_due_fires_once_for_missed_occurrences_and_not_before() -> None:
    assert due("0 0 3 * * *", "UTC", NOW - timedelta(days=3), NOW) == datetime(2026, 11, 25, 3, tzinfo=UTC)
    assert due("0 0 3 * * *", "UTC", NOW - timedelta(hours=1), NOW) is None
    assert CronSchedule.parse("0 0 0 31 2 *").next_after(NOW, time_zone("UTC")) is None


@pytest.mark.parametrize(
    "expr", ["* * * * *", "61 * * * * *", "*/0 * * * * *", "0 0 5-2 * * *", "x * * * * *"]
)
def test_bad_schedules_name_the_problem(expr: str) -> None:
    with pytest.raises(ScheduleError):
        CronSchedule.parse(expr)


def test_unknown_time_zone() -> None:
    with pytest.raises(ScheduleError, match="Mars/Olympus"):
        time_zone("Mars/Olympus")


def test_status_events_in_order_with_stable_ids() -> None:
    started = ev.status_events(
        RUN, ("Running", "Queued"), ("Running", "Building"), message="m", error=None, time=NOW
    )
    assert [e["type"] for e in started] == [ev.RUN_STARTED, ev.RUN_PHASE_CHANGED]
    again = ev.status_events(
        RUN, ("Running", "Queued"), ("Running", "Building"), message="m", error=None, time=NOW
    )
    assert [e["id"] for e in again] == [e["id"] for e in started]
    assert started[0]["source"] == RUN.template_id and started[0]["specversion"] == "1.0"
    same = ev.status_events(
        RUN, ("Running", "Building"), ("Running", "Building"), message="x", error=None, time=NOW
    )
    assert same == []
    back = ev.status_events(  # a late report of an earlier phase: the store keeps the later one
        RUN, ("Running", "Validating"), ("Running", "Customizing"), message="x", error=None, time=NOW
    )
    assert back == []
    failed = ev.status_events(
        RUN,
        ("Running", "Customizing"),
        ("Failed", None),
        message="boom",
        error={"code": "E", "step": "s"},
        time=NOW,
    )
    assert [e["type"] for e in failed] == [ev.RUN_FAILED]
    assert failed[0]["data"]["error"] == {"code": "E", "step": "s"}
    assert ev.status_events(RUN, ("Canceled", None), ("Failed", None), message="", error=None, time=NOW) == []
    output = {
        "regions": [{"region": "westeurope", "status": "succeeded"}, {"region": "eastus", "status": "failed"}]
    }
    reps = ev.replication_events(RUN, "img", output, time=NOW)
    assert [(e["data"]["region"], e["data"]["status"]) for e in reps] == [
        ("westeurope", "succeeded"),
        ("eastus", "failed"),
    ]
    assert len({e["id"] for e in reps}) == 2
    ordered = [*started, *ev.status_events(RUN, ("Running", "Building"), ("Running", "Distributing"),
                                           message="", error=None, time=NOW), *reps, *failed]  # fmt: skip
    assert [e["sequence"] for e in ordered] == sorted(e["sequence"] for e in ordered)


def _details(version: str, shas: dict[str, str]) -> dict[str, Any]:
    return {
        "source": {"type": "PlatformImage", "id": "x", "exact_version": version},
        "artifacts": [{"uri": u, "sha256": s} for u, s in shas.items()],
    }


def test_recorded_fingerprints_follow_inputs_not_tags() -> None:
    url = "http://127.0.0.1:1/devstoreaccount1/image-artifacts/a.sh"
    body = template(customize=[{"type": "Shell", "name": "a", "scriptUri": url}])
    base = recorded_inputs(body, _details("1.0.0", {url: "a" * 64}))
    assert base is not None
    tagged = {**body, "tags": {"owner": "me"}}
    assert recorded_inputs(tagged, _details("1.0.0", {url: "a" * 64})).fingerprint == base.fingerprint  # type: ignore[union-attr]
    assert recorded_inputs(body, _details("1.0.1", {url: "a" * 64})).fingerprint != base.fingerprint  # type: ignore[union-attr]
    assert recorded_inputs(body, _details("1.0.0", {url: "b" * 64})).fingerprint != base.fingerprint  # type: ignore[union-attr]
    assert recorded_inputs(body, {}) is None
    assert source_version(_details("1.0.0", {})) == "1.0.0"
    assert uses_blob(body, url) == ["properties.customize[0].scriptUri"]
    assert uses_blob(body, url.replace("a.sh", "b.sh")) == []
    assert same_blob(url + "?sv=2020&sig=secret", url)


def test_upload_names_and_deployment_templates() -> None:
    assert coordinates("s1/rg1/t1.json") == ("s1", "rg1", "t1")
    assert coordinates("t1.json")[2] == "t1"
    with pytest.raises(UploadError, match="too many folders"):
        coordinates("a/b/c/d.json")
    with pytest.raises(UploadError, match=r"subscription '\.\.'"):
        coordinates("../rg/t.json")
    with pytest.raises(UploadError, match="resource group 'a b'"):
        coordinates("a b/t.json")
    resource = {
        "type": "Microsoft.VirtualMachineImages/imageTemplates",
        "name": "[parameters('n')]",
        **template(),
    }
    trigger = {
        "type": "Microsoft.VirtualMachineImages/imageTemplates/triggers",
        "name": "[concat(parameters('n'), '/t')]",
        "properties": {"kind": "SourceImage"},
    }
    body = {"parameters": {"n": {"defaultValue": "web"}}, "resources": [resource]}
    got, triggers = extract(body)
    assert got["name"] == "web" and triggers == []
    with pytest.raises(UploadError, match="concat"):
        extract({**body, "resources": [resource, trigger]})
    nested = {
        **resource,
        "resources": [{"type": "triggers", "name": "onBase", "properties": {"kind": "SourceImage"}}],
    }
    got, triggers = extract({**body, "resources": [nested]})
    assert "resources" not in got and [t[0] for t in triggers] == ["onBase"]
    with pytest.raises(UploadError, match="exactly one"):
        extract({"resources": [resource, resource]})
