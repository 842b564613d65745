"""Polling helpers for the durable tests (real client, real HTTP)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import azure.durable_functions as df

FINAL = ("Completed", "Failed", "Terminated")


def wait_for(
    run: Callable[[Any], Any],
    client: df.DurableOrchestrationClient,
    iid: str,
    statuses: tuple[str, ...] = FINAL,
    timeout: float = 30,
) -> df.DurableOrchestrationStatus:
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = run(client.get_status(iid))
        if st and st.runtime_status is not None and st.runtime_status.value in statuses:
            return st
        time.sleep(0.02)
    raise AssertionError(f"{iid} not in {statuses} after {timeout}s: {st.to_json() if st else None}")
