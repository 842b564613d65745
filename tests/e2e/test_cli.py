"""The `aib` command line against the real local runtime (BusyBox builds): `run --follow` driven in tmux,
`--no-wait`, `logs --follow`, `shell` and `cleanup` of a kept build root, resume from a failed run,
`try` of one step with its file diff, and `lint`."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.demo import RESOURCE_GROUP
from imagebuilder.providers.local.sweep import sweep
from tests.e2e.conftest import E2E, check_vhd, file_path

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
RG = RESOURCE_GROUP
IDENTITY = (
    f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/{RG}"
    "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/imagebuilder"
)
RUN_ID = re.compile(r"^\d{14}-[0-9a-f]{8}$")


def busybox(customize: list[dict[str, Any]], **props: Any) -> dict[str, Any]:
    return {
        "location": "westeurope",
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {IDENTITY: {}}},
        "properties": {
            "buildTimeoutInMinutes": 60,
            "source": {
                "type": "PlatformImage",
                "publisher": "ImageBuilderLocal",
                "offer": "busybox",
                "sku": "stable",
                "version": "latest",
            },
            "customize": customize,
            "distribute": [{"type": "VHD", "runOutputName": "cli-vhd"}],
            **props,
        },
    }


def shell(name: str, *lines: str) -> dict[str, Any]:
    return {"type": "Shell", "name": name, "inline": list(lines)}


def aib_env(e2e: E2E) -> dict[str, str]:
    return {**os.environ, "AIB_STATE_DIR": str(e2e.runtime.state_dir), "COLUMNS": "160"}


def aib(
    e2e: E2E, *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aibcli", *args],
        cwd=ROOT,
        env={**aib_env(e2e), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def create(e2e: E2E, tmp_path: Path, name: str, template: dict[str, Any]) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(template))
    done = aib(e2e, "create", "-g", RG, "-n", name, "--image-template", str(path))
    assert done.returncode == 0, done.stderr
    assert name in done.stdout


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------ follow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is installed by scripts/setup.sh")
def test_run_follow_in_tmux_shows_phases_advancing_and_ends_with_the_outputs(
    e2e: E2E, tmp_path: Path
) -> None:
    name = "cli-follow"
    # two phases that last long enough to be seen running (Building and Distributing of a BusyBox build
    # take a fraction of a second now)
    validate = {"inVMValidations": [shell("linger", "sleep 2", "test -f /etc/followed")]}
    template = busybox(
        [shell("settle", "sleep 3", "echo followed | sudo tee /etc/followed")], validate=validate
    )
    create(e2e, tmp_path, name, template)
    socket = f"aibtest-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket]
    cmd = (
        f"cd {ROOT} && AIB_STATE_DIR={e2e.runtime.state_dir} {sys.executable} -m aibcli run -g {RG} -n {name}"
        " --follow; echo AIB-EXIT=$?; sleep 600"
    )
    subprocess.run([*tmux, "new-session", "-d", "-s", "follow", "-x", "160", "-y", "60", cmd], check=True)
    screens: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            screen = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", "follow"], capture_output=True, text=True, check=True
            ).stdout
            if not screens or screen != screens[-1]:
                screens.append(screen)
            if "AIB-EXIT=" in screen:
                break
            time.sleep(0.25)
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
    final = screens[-1]
    assert "AIB-EXIT=0" in final, final
    running = {
        m.group(1)
        for s in screens
        for m in re.finditer(r"^\s*(Building|Customizing|Validating|Distributing)[\s│]+running", s, re.M)
    }
    assert len(running) >= 2, f"phases seen running: {running}\n" + "\n-----\n".join(screens[-5:])
    for phase in ("Building", "Customizing", "Distributing"):
        assert re.search(rf"^\s*{phase}[\s│]+done[\s│]+\d+\.\d+s", final, re.M), final
    assert re.search(r"customize\[0\] \(Shell: settle\)[\s│]+succeeded[\s│]+\d+\.\d+s", final), final
    assert "outputs" in final and "cli-vhd" in final and "Succeeded" in final, final


def test_run_no_wait_returns_the_run_id_while_the_build_runs(e2e: E2E, tmp_path: Path) -> None:
    name = "cli-nowait"
    create(e2e, tmp_path, name, busybox([shell("slow", "sleep 5")]))
    started = aib(e2e, "run", "-g", RG, "-n", name, "--no-wait")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip()
    assert RUN_ID.match(run_id), started.stdout
    runs = json.loads(aib(e2e, "runs", "-g", RG, "-n", name, "-o", "json").stdout)
    assert [r["name"] for r in runs] == [run_id]
    assert runs[0]["properties"]["runState"] == "Running"  # returned before the build ended
    followed = aib(e2e, "logs", "-g", RG, "-n", name, run_id, "--follow")
    assert followed.returncode == 0, followed.stderr
    assert "==> customize[0] (Shell: slow): succeeded" in followed.stdout
    shown = json.loads(aib(e2e, "show-runs", "-g", RG, "-n", name, "-o", "json").stdout)
    assert [o["name"] for o in shown] == ["cli-vhd"]


def test_bad_input_exits_2_with_the_api_error(e2e: E2E, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(busybox([shell("x", "true")], buildTimeoutInMinutes=100000)))
    done = aib(e2e, "create", "-g", RG, "-n", "cli-bad", "--image-template", str(path))
    assert done.returncode == 2
    assert (
        "error: InvalidParameter" in done.stderr and "target: properties.buildTimeoutInMinutes" in done.stderr
    )
    missing = aib(e2e, "show", "-g", RG, "-n", "cli-does-not-exist")
    assert missing.returncode == 2 and "ResourceNotFound" in missing.stderr


# ------------------------------------------------------------------------------------ step in
def test_shell_sees_what_the_failed_step_left_and_cleanup_removes_it(e2e: E2E, tmp_path: Path) -> None:
    name = "cli-shell"
    steps = [
        shell("leave evidence", "echo half-done | sudo tee /etc/evidence", "sudo mkdir -p /opt/app", "exit 3")
    ]
    create(e2e, tmp_path, name, busybox(steps, errorHandling={"onCustomizerError": "abort"}))
    failed = aib(e2e, "run", "-g", RG, "-n", name, timeout=600)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    run = json.loads(aib(e2e, "runs", "-g", RG, "-n", name, "-o", "json").stdout)[-1]
    kept = [k for k in run["properties"]["details"]["cleanup"]["kept"] if k.startswith("build root ")]
    run_dir = Path(kept[0][len("build root ") :]).parent.parent

    looked = aib(e2e, "shell", "-g", RG, "-n", name, "-c", "cat /etc/evidence; ls -d /opt/app; hostname")
    assert looked.returncode == 0, looked.stderr
    assert looked.stdout.split() == ["half-done", "/opt/app", "localhost"]
    offline = aib(e2e, "shell", "-g", RG, "-n", name, "-c", "sed -n '3,$p' /proc/net/dev | cut -d: -f1")
    assert offline.stdout.split() == ["lo"]  # network off unless asked

    # the sweeper keeps it even once no run owns it (template deleted), until `aib cleanup`
    report = sweep(e2e.provider_state, {}, grace_seconds=0)
    assert run_dir.is_dir() and any(str(run_dir) in k for k in report.kept), report

    cleaned = aib(e2e, "cleanup", "-g", RG, "-n", name, run["name"])
    assert cleaned.returncode == 0, cleaned.stderr
    assert f"removed run folder {run_dir}" in cleaned.stdout
    assert not run_dir.exists()
    again = aib(e2e, "shell", "-g", RG, "-n", name, "-c", "true")
    assert again.returncode == 2 and "cleaned up" in again.stderr

    # a kept root goes with its template, as AIB's kept build VM goes with the staging resource group
    assert aib(e2e, "run", "-g", RG, "-n", name, timeout=600).returncode == 1
    run = json.loads(aib(e2e, "runs", "-g", RG, "-n", name, "-o", "json").stdout)[-1]
    kept = [k for k in run["properties"]["details"]["cleanup"]["kept"] if k.startswith("build root ")]
    run_dir = Path(kept[0][len("build root ") :]).parent.parent
    assert (run_dir / "kept.json").is_file()
    assert aib(e2e, "delete", "-g", RG, "-n", name).returncode == 0
    assert not run_dir.exists()
    e2e.assert_no_leaks()


# ------------------------------------------------------------------------------------ resume
def test_resume_from_a_failed_run_after_fixing_the_script(e2e: E2E, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "first.sh").write_text("echo first | sudo tee /etc/first\n")
    (www / "second.sh").write_text("echo broken; exit 7\n")
    name = "cli-resume"

    def vhd_files(record: dict[str, Any]) -> dict[str, bytes | None]:
        outputs = {o["name"]: o["properties"] for o in record["properties"]["outputs"]}
        vhd = check_vhd(file_path(outputs["cli-vhd"]["artifactUri"]))
        return {f: vhd.read(f) for f in ("/etc/first", "/etc/second", "/etc/passwd")}

    with serve(www) as url:
        steps = [
            {"type": "Shell", "name": "first", "scriptUri": f"{url}/first.sh"},
            {"type": "Shell", "name": "second", "scriptUri": f"{url}/second.sh"},
        ]
        create(e2e, tmp_path, name, busybox(steps))
        failed = aib(e2e, "run", "-g", RG, "-n", name, "-o", "json", timeout=600)
        assert failed.returncode == 1
        failed_id = json.loads(failed.stdout)["name"]

        refused = aib(e2e, "run", "-g", RG, "-n", name, "--resume-from", "20000101000000-00000000")
        assert refused.returncode == 2 and "ResourceNotFound" in refused.stderr

        (www / "second.sh").write_text("echo second | sudo tee /etc/second\n")  # the fix
        resumed = aib(e2e, "run", "-g", RG, "-n", name, "--resume-from", failed_id, "-o", "json", timeout=600)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        record = json.loads(resumed.stdout)
        details = record["properties"]["details"]
        assert details["resumeFrom"]["runId"] == failed_id
        assert details["resumeFrom"]["failedStep"] == "customize[1] (Shell: second)"
        # from the run record: the step before the failed one was reused, the failed one ran again
        ran = [(s["name"], s["status"], s["cache"]["hit"]) for s in details["steps"]]
        assert ran == [
            ("customize[0] (Shell: first)", "succeeded", True),
            ("customize[1] (Shell: second)", "succeeded", False),
        ]
        resumed_files = vhd_files(record)
        assert resumed_files["/etc/first"] == b"first\n" and resumed_files["/etc/second"] == b"second\n"

        # a clean build of the fixed template (no step cache) gives the same image
        clean = aib(e2e, "run", "-g", RG, "-n", name, "--no-cache", "-o", "json", timeout=600)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        clean_record = json.loads(clean.stdout)
        assert [s["cache"]["hit"] for s in clean_record["properties"]["details"]["steps"]] == [False, False]
        assert vhd_files(clean_record) == resumed_files

        # resuming a run that did not fail is refused, naming why
        again = aib(e2e, "run", "-g", RG, "-n", name, "--resume-from", record["name"])
        assert again.returncode == 2
        assert "ResumeNotPossible" in again.stderr and "only a failed run" in again.stderr

        # an artifact used before the failed step changed: the resumed run stops at prepare, naming it
        (www / "first.sh").write_text("echo FIRST | sudo tee /etc/first\n")
        changed = aib(e2e, "run", "-g", RG, "-n", name, "--resume-from", failed_id, "-o", "json", timeout=600)
        assert changed.returncode == 1
        error = json.loads(changed.stdout)["properties"]["error"]
        assert error["code"] == "ResumeNotPossible" and f"{url}/first.sh" in error["message"]


# ------------------------------------------------------------------------------------ try, lint
def test_try_runs_one_step_and_prints_its_file_diff(e2e: E2E, tmp_path: Path) -> None:
    template = busybox(
        [
            shell("zero", "echo zero | sudo tee /etc/zero", "echo a | sudo tee /etc/a-file"),
            shell(
                "one",
                "sudo mkdir -p /opt/tried",
                "echo b | sudo tee /opt/tried/new",
                "echo more | sudo tee -a /etc/a-file",
                "sudo rm /etc/zero",
            ),
        ]
    )
    path = tmp_path / "try.json"
    path.write_text(json.dumps(template))
    state = tmp_path / "try-state"
    argv = ["try", str(path), "--step", "1", "--state-dir", str(state)]
    argv += ["--cache-dir", str(e2e.env["IMAGEBUILDER_CACHE_DIR"])]  # the shared base cache
    steps = {"IMAGEBUILDER_STEP_CACHE_DIR": str(tmp_path / "steps")}  # a step cache of its own
    done = aib(e2e, *argv, env=steps)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.splitlines()
    assert "customize[0]: succeeded in" in done.stdout and "(from the step cache)" not in done.stdout
    assert "--- customize[1]: succeeded" in done.stdout
    for line in ("A /opt/tried", "A /opt/tried/new", "M /etc/a-file", "D /etc/zero"):
        assert line in out, done.stdout
    assert not [p for p in (state / "local" / "runs").iterdir()]  # nothing left behind
    # again: the step before comes from the step cache, the tried step still runs and shows its diff
    again = aib(e2e, *argv, env=steps)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "customize[0]: succeeded in 0.0s (from the step cache)" in again.stdout
    assert "A /opt/tried/new" in again.stdout.splitlines() and "cache hit" not in again.stdout


def test_lint_flags_a_missing_checksum_and_the_api_errors(tmp_path: Path) -> None:
    template = busybox([{"type": "Shell", "name": "x", "scriptUri": "https://example.com/x.sh"}])
    path = tmp_path / "t.json"
    path.write_text(json.dumps(template))
    done = subprocess.run(
        [sys.executable, "-m", "aibcli", "lint", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout
    assert "warning: MissingChecksum [properties.customize[0].sha256Checksum]" in done.stdout
    template["properties"]["buildTimeoutInMinutes"] = 100000
    path.write_text(json.dumps(template))
    bad = subprocess.run(
        [sys.executable, "-m", "aibcli", "lint", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert "error:" in bad.stdout and "buildTimeoutInMinutes" in bad.stdout


def test_run_body_is_optional_and_checked(e2e: E2E, tmp_path: Path) -> None:
    name = "cli-body"
    create(e2e, tmp_path, name, busybox([shell("noop", "true")]))
    path = e2e.api.template_path(name) + "/run"
    unknown = e2e.api.request("POST", path, {"resumeFrom": "x"})
    assert unknown.status == 400 and unknown.body["error"]["target"] == "resumeFrom"
    assert "resumeFromRunId" in unknown.body["error"]["message"]
    bad_cache = e2e.api.request("POST", path, {"cache": "sometimes"})
    assert bad_cache.status == 400 and bad_cache.body["error"]["target"] == "cache"
    started = e2e.api.request("POST", path, {})  # an empty object, as no body at all (AIB's run)
    assert started.status == 202 and RUN_ID.match(started.headers["x-ms-imagebuilder-run-id"])
    e2e.api.watch(name, timeout=300, interval=0.5)


def test_lint_flags_a_typod_member_with_its_suggestion(tmp_path: Path) -> None:
    template = busybox([{"type": "Shell", "name": "x", "inlne": ["echo hi"]}])
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(template))
    done = subprocess.run(
        [sys.executable, "-m", "aibcli", "lint", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2  # the API refuses it: with the typo, the step has no script
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "warning: UnknownMember [properties.customize[0].inlne]: ignored unknown member "
        "properties.customize[0].inlne; did you mean inline?"
    )
    assert any(line.startswith("error: NoCustomizerScript") for line in lines)


def test_output_list_and_triggers(e2e: E2E, tmp_path: Path) -> None:
    name = "cli-triggers"
    create(e2e, tmp_path, name, busybox([shell("noop", "true")]))
    outputs = json.loads(aib(e2e, "output", "list", "-g", RG, "-n", name, "-o", "json").stdout)
    assert [o["runOutputName"] for o in outputs] == ["cli-vhd"]
    created = aib(
        e2e, "trigger", "create", "-g", RG, "-n", name, "--trigger-name", "nightly", "--kind", "Schedule",
        "--schedule", "0 0 3 * * *", "--time-zone", "UTC",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    listed = json.loads(aib(e2e, "trigger", "list", "-g", RG, "-n", name, "-o", "json").stdout)
    assert [(t["name"], t["properties"]["kind"]) for t in listed] == [("nightly", "Schedule")]
    bad = aib(
        e2e, "trigger", "create", "-g", RG, "-n", name, "--trigger-name", "bad", "--kind", "Schedule",
        "--schedule", "every day",
    )  # fmt: skip
    assert bad.returncode == 2 and "schedule" in bad.stderr.lower()
    assert aib(e2e, "trigger", "delete", "-g", RG, "-n", name, "--trigger-name", "nightly").returncode == 0
    assert json.loads(aib(e2e, "trigger", "list", "-g", RG, "-n", name, "-o", "json").stdout) == []
    assert aib(e2e, "delete", "-g", RG, "-n", name).returncode == 0
    gone = aib(e2e, "show", "-g", RG, "-n", name)
    assert gone.returncode == 2 and "ResourceNotFound" in gone.stderr
