"""Pure planning: what a template asks for, and how results map to AIB's run states and messages."""

from __future__ import annotations

from imagebuilder.pipeline import plan as p
from imagebuilder.pipeline.messages import ErrorInfo
from tests.orchestrators.fakes import template


def test_plan_reads_the_template_with_aib_defaults() -> None:
    plan = p.BuildPlan.from_template(template())
    assert plan.timeout_minutes == 240
    assert plan.on_customizer_error == "cleanup" and plan.on_validation_error == "cleanup"
    assert [c.step for c in plan.customizers] == [
        "customize[0] (File: page)",
        "customize[1] (Shell: setup)",
    ]
    assert [(t.run_output_name, t.regions) for t in plan.targets] == [
        ("managed", ("westeurope",)),
        ("gallery", ("westeurope", "northeurope")),
        ("vhd", ("westeurope",)),
    ]
    plan = p.BuildPlan.from_template(
        template(buildTimeoutInMinutes=90, errorHandling={"onCustomizerError": "abort"})
    )
    assert plan.timeout_minutes == 90 and plan.on_customizer_error == "abort"


def test_regions_fall_back_to_replication_regions_then_the_template_location() -> None:
    assert p.target_regions({"type": "SharedImage", "replicationRegions": ["a", "b", "a"]}, "x") == ("a", "b")
    assert p.target_regions({"type": "SharedImage"}, "x") == ("x",)
    assert p.target_regions({"type": "ManagedImage", "location": "m"}, "x") == ("m",)


def test_run_state_over_outputs() -> None:
    assert p.final_run_state([{"status": "succeeded"}, {"status": "succeeded"}]) == p.SUCCEEDED
    assert p.final_run_state([{"status": "succeeded"}, {"status": "failed"}]) == p.PARTIALLY_SUCCEEDED
    assert p.final_run_state([{"status": "partial"}]) == p.PARTIALLY_SUCCEEDED
    assert p.final_run_state([{"status": "failed"}]) == p.FAILED
    assert p.output_status([{"status": "succeeded"}, {"status": "failed"}]) == "partial"
    assert p.output_status([]) == "failed"


def test_failure_message_names_step_exit_code_tail_and_log() -> None:
    error = ErrorInfo(
        code="CustomizerFailed",
        message="script failed",
        step="customize[1] (Shell: x)",
        exit_code=2,
        log_tail=[f"line {i}" for i in range(30)],
        log_uri="http://logs/customization.log",
    )
    text = p.failure_message(error, kept=["build root /r"])
    head = "step customize[1] (Shell: x) failed with exit code 2 [CustomizerFailed]"
    assert text.startswith(head + ": script failed")
    restated = error.model_copy(update={"message": "customize[1] (Shell: x) failed: exited with code 2"})
    assert p.failure_message(restated).splitlines()[0] == head
    # a restated step is said once, but the cause after it is kept (it was dropped with the step)
    capture = ErrorInfo(
        code="CaptureFailed", message="capture failed: mkfs.ext4: No space left", step="capture"
    )
    assert p.failure_message(capture).splitlines()[0] == (
        "step capture failed [CaptureFailed]: mkfs.ext4: No space left"
    )
    assert "line 29" in text and "line 9\n" not in text  # only the last 20 lines
    assert "full log: http://logs/customization.log" in text
    assert "kept for inspection (errorHandling abort): build root /r" in text
