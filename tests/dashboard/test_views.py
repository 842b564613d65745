"""What the run page computes from a run record and its log, without a runtime."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dashboard import views
from imagebuilder.pipeline.messages import RunRef
from imagebuilder.store import RunRecord, StoredTemplate

T0 = datetime(2026, 12, 1, tzinfo=UTC)
TEMPLATE: dict[str, Any] = {"properties": {"customize": [{"type": "Shell", "name": "a", "inline": ["true"]}]}}


def record(
    state: str, sub: str | None = None, error: dict[str, Any] | None = None, **details: Any
) -> RunRecord:
    return RunRecord(
        run=RunRef(
            subscription_id="s", resource_group="rg", template_name="t", run_id="20261201000000-aaaaaaaa"
        ),
        run_state=state,
        run_sub_state=sub,
        message="",
        error=error,
        details=details,
        created_time=T0,
        start_time=T0,
        end_time=None if state == "Running" else T0,
        etag="e",
        template_snapshot=TEMPLATE,
    )


def stored() -> StoredTemplate:
    return StoredTemplate("s", "rg", "t", TEMPLATE, "e", T0, T0)


LOG = """==> prepare (source and artifacts): started
==> prepare (source and artifacts): succeeded in 0.1s
==> customize[0] (Shell: a: b): started
[customize[0] (Shell: a: b)] hello
==> customize[0] (Shell: a: b): transient failure, will be retried: boom
==> customize[0] (Shell: a: b): started
==> customize[0] (Shell: a: b): failed in 2.5s
==> cleanup: started
"""


def test_steps_come_from_the_log_and_the_record_adds_cache_verdicts() -> None:
    run = record(
        "Failed",
        error={"step": "customize[0] (Shell: a: b)", "exit_code": 3},
        steps=[
            {
                "name": "prepare (source and artifacts)",
                "status": "succeeded",
                "seconds": 0.12,
                "cache": {"id": "abc123", "hit": True, "seconds": 0.01},
            }
        ],
    )
    steps = {s.name: s for s in views.steps_of(run, LOG)}
    assert list(steps) == ["prepare (source and artifacts)", "customize[0] (Shell: a: b)", "cleanup"]
    assert steps["prepare (source and artifacts)"].cache_hit is True
    assert steps["prepare (source and artifacts)"].seconds == 0.12
    custom = steps["customize[0] (Shell: a: b)"]
    assert (custom.status, custom.seconds, custom.retries, custom.phase) == ("failed", 2.5, 1, "Customizing")
    assert custom.cache_hit is None
    assert steps["cleanup"].status == "interrupted"  # the run ended without the step's end line


def test_phases_while_running_and_after_a_failure() -> None:
    running = {p.name: p.state for p in views.phases_of(record("Running", "Validating"))}
    assert running == {
        "Building": "done",
        "Customizing": "done",
        "Optimizing": "skipped",
        "Validating": "running",
        "Distributing": "pending",
    }
    failed = record(
        "Failed",
        error={"step": "customize[0] (Shell: a)"},
        phases={"Building": {"seconds": 1.0}, "Customizing": {"seconds": 2.0}},
    )
    states = {p.name: (p.state, p.seconds) for p in views.phases_of(failed)}
    assert states["Building"] == ("done", 1.0) and states["Customizing"] == ("failed", 2.0)
    assert states["Distributing"] == ("skipped", None)


def test_resume_is_offered_only_for_a_failed_customizer() -> None:
    assert views.resume_of(record("Succeeded"), stored()) is None
    ok = views.resume_of(record("Failed", error={"step": "customize[0] (Shell: a)"}), stored())
    assert ok is not None and ok.possible and ok.step == "customize[0] (Shell: a)"
    no = views.resume_of(record("Failed", error={"step": "validate.inVMValidations"}), stored())
    assert no is not None and not no.possible and "not in a customizer" in (no.reason or "")


def test_only_file_uris_are_local_files() -> None:
    assert views.local_file("file:///var/x/a.vhd") == "/var/x/a.vhd"
    assert views.local_file("file://host/var/x/a.vhd") is None
    assert views.local_file("https://acct.blob.core.windows.net/c/a.vhd") is None


def test_cache_hits_and_the_duration_to_expect() -> None:
    steps = [
        {
            "name": "customize[0] (Shell: a)",
            "status": "succeeded",
            "seconds": 0.1,
            "cache": {"id": "x", "hit": True},
        },
        {
            "name": "customize[1] (Shell: b)",
            "status": "succeeded",
            "seconds": 3.0,
            "cache": {"id": "y", "hit": False},
        },
        {"name": "validate.inVMValidations", "status": "succeeded", "seconds": 1.0},
    ]
    assert views.cache_hits(record("Succeeded", steps=steps)) == (1, 2)
    assert views.cache_hits(record("Succeeded")) is None
    earlier = record("Succeeded")
    earlier = RunRecord(
        **{**earlier.__dict__, "created_time": T0.replace(day=1), "end_time": T0.replace(minute=5)}
    )
    failed = RunRecord(**{**earlier.__dict__, "run_state": "Failed"})
    now = RunRecord(**{**record("Running", "Building").__dict__, "created_time": T0.replace(day=2)})
    assert views.typical_seconds([earlier, failed, now], now) == 300.0
    assert views.typical_seconds([now], now) is None
