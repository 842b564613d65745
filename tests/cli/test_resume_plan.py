"""Resume checks (`imagebuilder.pipeline.resume`): where a resumed run starts and when it is refused."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from imagebuilder.pipeline.resume import ResumeRefused, changed_artifacts, plan_resume

TEMPLATE: dict[str, Any] = {
    "location": "westeurope",
    "properties": {
        "source": {
            "type": "PlatformImage",
            "publisher": "ImageBuilderLocal",
            "offer": "busybox",
            "sku": "stable",
        },
        "customize": [
            {"type": "Shell", "name": "one", "inline": ["echo one > /etc/one"]},
            {"type": "Shell", "name": "fetch", "scriptUri": "http://x/two.sh"},
            {"type": "Shell", "name": "three", "scriptUri": "http://x/three.sh"},
        ],
    },
}
ERROR = {"code": "CustomizerFailed", "message": "exit 1", "step": "customize[2] (Shell: three)"}
DETAILS = {
    "artifacts": [
        {"uri": "http://x/two.sh", "sha256": "a" * 64, "size": 3, "location": "/s/two"},
        {"uri": "http://x/three.sh", "sha256": "b" * 64, "size": 3, "location": "/s/three"},
    ]
}


def plan(current: dict[str, Any], **kw: Any) -> Any:
    args: dict[str, Any] = {
        "run_id": "r1",
        "run_state": "Failed",
        "error": ERROR,
        "details": DETAILS,
        "snapshot": TEMPLATE,
        "current": current,
    }
    args.update(kw)
    return plan_resume(**args)


def test_resume_starts_at_the_failed_customizer_and_keeps_the_artifacts_before_it() -> None:
    p = plan(TEMPLATE)
    assert (p.failed_index, p.failed_step) == (2, "customize[2] (Shell: three)")
    assert [a["uri"] for a in p.artifacts] == ["http://x/two.sh"]  # the failed step's own may change
    assert p.as_details()["runId"] == "r1"


def test_the_failed_step_itself_may_change() -> None:
    fixed = copy.deepcopy(TEMPLATE)
    fixed["properties"]["customize"][2]["scriptUri"] = "http://x/three-fixed.sh"
    assert plan(fixed).failed_index == 2


def test_a_changed_step_before_the_failed_one_is_refused_naming_it() -> None:
    changed = copy.deepcopy(TEMPLATE)
    changed["properties"]["customize"][0]["inline"] = ["echo uno > /etc/one"]
    with pytest.raises(ResumeRefused) as exc:
        plan(changed)
    assert exc.value.target == "properties.customize[0]"
    assert "customize[0] changed since run r1" in exc.value.message


def test_a_changed_source_is_refused() -> None:
    changed = copy.deepcopy(TEMPLATE)
    changed["properties"]["source"]["sku"] = "other"
    with pytest.raises(ResumeRefused) as exc:
        plan(changed)
    assert exc.value.target == "properties.source"


@pytest.mark.parametrize(
    ("state", "error", "needle"),
    [
        ("Succeeded", None, "only a failed run"),
        ("Failed", {"code": "X", "message": "m", "step": "capture"}, "not in a customizer"),
    ],
)
def test_only_a_run_failed_in_a_customizer_can_be_resumed(state: str, error: Any, needle: str) -> None:
    with pytest.raises(ResumeRefused, match=needle):
        plan(TEMPLATE, run_state=state, error=error)


def test_the_failed_step_is_found_in_the_step_reports_when_the_error_names_none() -> None:
    details = {
        **DETAILS,
        "steps": [
            {"name": "customize[0] (Shell: one)", "status": "succeeded"},
            {"name": "customize[1] (Shell: fetch)", "status": "failed"},
        ],
    }
    assert plan(TEMPLATE, error={"code": "X", "message": "m"}, details=details).failed_index == 1


def test_changed_artifacts_names_the_uri_and_both_checksums() -> None:
    p = plan(TEMPLATE).as_details()
    same = [{"uri": "http://x/two.sh", "sha256": "a" * 64}]
    assert changed_artifacts(p, same) == []
    lines = changed_artifacts(p, [{"uri": "http://x/two.sh", "sha256": "c" * 64}])
    assert len(lines) == 1 and "http://x/two.sh" in lines[0] and "aaaaaaaaaaaa" in lines[0]
    assert "cccccccccccc" in lines[0]


def test_the_artifacts_before_the_failed_step_come_from_the_one_list() -> None:
    """`build_artifacts` decides what a step fetches: a File's sourceUri counts; what validators and
    optimize.workload fetch is used after the failed step, so it is not carried over."""
    current: dict[str, Any] = copy.deepcopy(TEMPLATE)
    props = current["properties"]
    props["customize"] = [
        {"type": "File", "name": "f", "sourceUri": "http://x/f.txt", "destination": "/etc/f"},
        {"type": "Shell", "name": "three", "scriptUri": "http://x/three.sh"},
    ]
    props["validate"] = {"inVMValidations": [{"type": "Shell", "name": "v", "scriptUri": "http://x/v.sh"}]}
    props["optimize"] = {"workload": {"scriptUri": "http://x/w.sh"}}
    details = {
        "artifacts": [
            {"uri": u, "sha256": "a" * 64}
            for u in ("http://x/f.txt", "http://x/three.sh", "http://x/v.sh", "http://x/w.sh")
        ]
    }
    error = {**ERROR, "step": "customize[1] (Shell: three)"}
    p = plan(current, snapshot=current, details=details, error=error)
    assert [a["uri"] for a in p.artifacts] == ["http://x/f.txt"]
