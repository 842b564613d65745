"""What the Optimizing phase reports for optimize.vmBoot / workload: plainly, that the image is unchanged."""

from __future__ import annotations

from imagebuilder.pipeline.plan import optimize_message


def test_vm_boot_enabled_says_no_step_runs() -> None:
    message = optimize_message({"properties": {"optimize": {"vmBoot": {"state": "Enabled"}}}})
    assert "optimize.vmBoot is Enabled" in message and "distributed as customized" in message


def test_workload_and_disabled() -> None:
    both = optimize_message(
        {"properties": {"optimize": {"vmBoot": {"state": "Disabled"}, "workload": {"state": "Enabled"}}}}
    )
    assert both == "optimize.workload is Enabled: its script is fetched and checksummed, not run"
    assert "no optimization step applies" in optimize_message({"properties": {"optimize": {}}})
