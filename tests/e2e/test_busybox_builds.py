"""BusyBox builds end to end: the ARM REST API on the real local runtime, Azurite, the durable engine and
the local provider. Each test checks the run's status and outputs through the API, the produced image
itself where there is one, and that nothing transient was left behind."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import E2E, check_vhd, file_path
from tests.e2e.sbom_checks import spdx_of

pytestmark = pytest.mark.slow

SHELL = "Shell"


def shell(name: str, *lines: str) -> dict[str, object]:
    return {"type": SHELL, "name": name, "inline": list(lines)}


def test_busybox_template_builds_and_distributes_everywhere(e2e: E2E, tmp_path: Path) -> None:
    name = "bb-happy"
    final = e2e.build(name, e2e.template("busybox-webpage.json"))
    assert final["runState"] == "Succeeded", final
    outputs = {o["name"]: o["properties"] for o in e2e.api.run_outputs(name)}
    assert set(outputs) == {"busybox-managed", "busybox-gallery", "busybox-vhd"}
    assert all(o["provisioningState"] == "Succeeded" for o in outputs.values()), outputs
    managed = outputs["busybox-managed"]["artifactId"]
    assert managed.endswith("/providers/Microsoft.Compute/images/busybox-webpage")
    gallery = outputs["busybox-gallery"]
    assert "/galleries/demoGallery/images/busybox-webpage/versions/" in gallery["artifactId"]
    assert [r["region"] for r in gallery["regions"]] == ["westeurope", "northeurope"]
    assert all(r["status"] == "succeeded" for r in gallery["regions"])

    # the image itself: a fixed VHD with a GPT disk whose root holds what the customizers put there
    vhd = check_vhd(file_path(outputs["busybox-vhd"]["artifactUri"]))
    page = vhd.read("/srv/www/index.html")
    assert page is not None and b"Hello from a golden image" in page
    assert vhd.read("/etc/motd") == b"built-by-imagebuilder\n"
    assert vhd.read("/etc/machine-id") == b"", "generalize empties machine-id"
    assert not vhd.exists("/tmp/index.html"), "generalize removes temp files"

    # the log tells the story step by step, and the resolved source is recorded on the run
    log = e2e.log_text(name)
    for step in ("prepare", "customize[0]", "customize[1]", "validate", "generalize", "capture", "cleanup"):
        assert f"==> {step}" in log, step
    # each step's started line once, then its end line; the steps in order, none overlapping;
    # cleanup's end line last (it rides on the final status write, before the run is seen Succeeded)
    marks = []
    for line in log.splitlines():
        found = re.match(r"==> (.+): started$", line) or re.match(r"==> (.+): (\w+) in [0-9.]+s$", line)
        if found:
            marks.append((found.group(1), "started" if line.endswith(": started") else "end"))
    steps = [s for s, kind in marks if kind == "started"]
    assert steps[0] == "prepare (source and artifacts)" and steps[-1] == "cleanup", marks
    parent = [m for m in marks if not m[0].startswith("distribute[")]  # regions replicate in parallel
    assert parent == [(s, k) for s in steps if not s.startswith("distribute[") for k in ("started", "end")]
    assert re.match(r"==> cleanup: done in [0-9.]+s$", log.splitlines()[-1]), log[-500:]
    record = e2e.latest_run(name)
    assert record.details["source"]["exact_version"]
    assert set(record.details["phases"]) >= {"Building", "Customizing", "Validating", "Distributing"}

    # an image with no package database: its SBOM lists the files (motd among them) and BusyBox
    doc = spdx_of(e2e, name, record.run.run_id, "busybox-vhd", tmp_path)
    assert "./etc/motd" in {f["fileName"] for f in doc["files"]}
    assert any(p["name"] == "busybox" and p["versionInfo"] for p in doc["packages"])
    e2e.assert_no_leaks()


def test_failing_customizer_names_step_exit_code_last_lines_and_log(e2e: E2E) -> None:
    name = "bb-fails"
    template = e2e.template(
        "busybox-webpage.json",
        customize=[
            shell("fine", "echo first step ok"),
            shell("breaks", "echo about to fail", "echo 'E: something specific went wrong' >&2", "exit 3"),
            shell("never runs", "touch /never"),
        ],
    )
    final = e2e.build(name, template)
    assert final["runState"] == "Failed"
    message = final["message"]
    assert "customize[1]" in message and "breaks" in message
    assert "exit code 3" in message
    assert "E: something specific went wrong" in message
    assert "full log:" in message and "customization.log" in message
    log = e2e.log_text(name)
    assert "==> customize[2]" not in log and "==> generalize" not in log
    assert "==> cleanup" in log
    assert e2e.api.run_outputs(name) == []
    e2e.assert_no_leaks()


def test_checksum_mismatch_fails_before_any_build_resource(e2e: E2E) -> None:
    name = "bb-checksum"
    template = e2e.template("busybox-webpage.json")
    wrong = "0" * 64
    template["properties"]["customize"][0]["sha256Checksum"] = wrong
    final = e2e.build(name, template)
    assert final["runState"] == "Failed"
    assert wrong in final["message"]
    assert "bd9f489e30d250c5619aed3dfc4983d73b3f341c3da8abb69237d2a910d5e5d8" in final["message"]
    log = e2e.log_text(name)
    assert "==> create build environment" not in log
    e2e.assert_no_leaks()


def test_cancel_during_a_long_customizer_cleans_up_and_ends_canceled(e2e: E2E) -> None:
    name = "bb-cancel"
    template = e2e.template(
        "busybox-webpage.json", customize=[shell("long", "echo sleeping", "sleep 300", "touch /done")]
    )
    e2e.api.put_template(name, template)
    e2e.api.run(name)
    e2e.wait_log(name, "sleeping")
    asked = time.monotonic()
    e2e.api.cancel(name)
    final = e2e.api.watch(name, timeout=180, interval=0.5)
    took = time.monotonic() - asked
    assert final["runState"] == "Canceled", final
    assert took < 150, f"cancel took {took:.0f}s: the sleeping customizer was not stopped by cleanup"
    log = e2e.log_text(name)
    assert "==> cleanup" in log and "==> generalize" not in log
    e2e.assert_no_leaks()


def test_build_timeout_fails_the_run_and_cleans_up(e2e: E2E) -> None:
    name = "bb-timeout"
    # 6 minutes is AIB's minimum; the runtime scales it by 0.05 (IMAGEBUILDER_TIMEOUT_SCALE): 18 s
    template = e2e.template(
        "busybox-webpage.json",
        buildTimeoutInMinutes=6,
        customize=[shell("too long", "echo sleeping", "sleep 300")],
    )
    final = e2e.build(name, template, timeout=240)
    assert final["runState"] == "Failed"
    assert "timed out after 6 minute(s)" in final["message"]
    assert "customize[0]" in final["message"]
    e2e.assert_no_leaks()


def test_abort_keeps_the_build_root_and_logs_and_says_where(e2e: E2E) -> None:
    name = "bb-abort"
    template = e2e.template(
        "busybox-webpage.json",
        customize=[shell("breaks", "echo evidence | sudo tee /root/evidence", "exit 7")],
        errorHandling={"onCustomizerError": "abort"},
    )
    final = e2e.build(name, template)
    assert final["runState"] == "Failed"
    message = final["message"]
    assert "exit code 7" in message
    assert "kept for inspection (errorHandling abort):" in message
    kept_root = next(line for line in message.split(", ") if "build root" in line)
    root = Path(kept_root.split("build root ", 1)[1].split(" (", 1)[0].strip())
    assert (root / "root" / "evidence").read_text() == "evidence\n", "the kept root shows the failed state"
    # the user inspected it; a cleanup without keep removes what abort kept
    from imagebuilder.pipeline.messages import BuildInput
    from imagebuilder.providers.base import NullLog
    from imagebuilder.providers.local.provider import LocalProvider

    record = e2e.latest_run(name)
    build = BuildInput(run=record.run, template=record.template_snapshot)
    report = LocalProvider(state_dir=e2e.provider_state).cleanup(build, keep=False, log=NullLog())
    assert not report.errors, report
    e2e.assert_no_leaks()
