"""Cancel always ends: a cancel at each phase of a real build reaches Canceled within a bounded time (the
orchestration's settle grace is 2 minutes; the figure is the worst seen), the audit finds nothing left,
and the template can be deleted right after (never a refusal loop)."""

from __future__ import annotations

import time

import pytest

from tests.reliability.audit import wait_clean
from tests.reliability.conftest import LONG, Rel, record
from tests.reliability.test_chaos import PHASES, STARTED

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(3600)]
BOUND_SECONDS = 150.0


def test_cancel_at_every_phase_ends_canceled_and_the_template_deletes(rel: Rel) -> None:
    phases = list(PHASES) if LONG else ["customize", "validate"]
    worst = 0.0
    at_phase: dict[str, str] = {}
    failures: list[str] = []
    leaked = 0
    for phase in phases:
        name = f"cancel-{phase}"
        template = rel.template(
            "busybox-webpage.json",
            customize=[
                {"type": "Shell", "name": "one", "inline": ["echo one"]},
                {"type": "Shell", "name": "slow", "inline": ["echo slow-start", "sleep 30"]},
            ],
            validate={"inVMValidations": [{"type": "Shell", "name": "v", "inline": ["sleep 20"]}]},
            distribute=[{"type": "VHD", "runOutputName": "vhd"}],
        )
        rel.api.put_template(name, template)
        rel.api.run(name)
        rel.wait_log(name, PHASES[phase], timeout=300)
        started = STARTED.findall(rel.log_text(name))
        at_phase[phase] = started[-1] if started else "?"
        t0 = time.monotonic()
        resp = rel.api.request("POST", rel.api.template_path(name) + "/cancel")
        if resp.status not in (200, 202, 409):  # 409: it had already ended
            failures.append(f"{phase}: cancel answered {resp.status}")
        final = rel.api.watch(name, timeout=600, interval=0.5)
        took = time.monotonic() - t0
        worst = max(worst, took)
        if resp.status != 409 and final["runState"] != "Canceled":
            failures.append(f"{phase}: ended {final['runState']}: {final.get('message')}")
        leaks = wait_clean(rel.provider_state, rel.cache_dir, rel.store)
        leaked += leaks.total()
        deleted = rel.api.request("DELETE", rel.api.template_path(name))
        gone = 0
        for _ in range(60):  # the delete is a long-running operation: gone within a minute
            gone = rel.api.request("GET", rel.api.template_path(name)).status
            if gone == 404:
                break
            time.sleep(1)
        if deleted.status not in (200, 202, 204) or gone != 404:
            failures.append(f"{phase}: delete after cancel answered {deleted.status}, then GET {gone}")
        after = wait_clean(rel.provider_state, rel.cache_dir, rel.store)  # the delete took the run's blobs
        leaked += after.total()
        if after.total():
            failures.append(f"{phase}: left after the delete: {after}")
    record(
        "cancel",
        "cancel during a phase, then delete the template",
        len(phases),
        lost=len(failures),
        leaked=leaked,
        note=f"worst time to Canceled {worst:.0f} s (bound {BOUND_SECONDS:.0f} s); canceled during: "
        + ", ".join(sorted(set(at_phase.values()))),
    )
    assert not failures, failures
    assert leaked == 0
    assert worst < BOUND_SECONDS
