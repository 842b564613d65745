"""Concurrency: N BusyBox builds started at once on this 2-core machine (8 in the long suite): every one
finishes, the runtime's peak memory is reported (VmHWM of the host process), and the audit is clean."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.reliability.audit import wait_clean
from tests.reliability.conftest import Rel, pick, record

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(3600)]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_builds_started_at_once_all_finish(rel: Rel) -> None:
    n = pick(3, 8)
    names = [f"conc-{i}" for i in range(n)]
    template = rel.template(
        "busybox-webpage.json",
        customize=[
            {"type": "Shell", "name": "work", "inline": ["sleep 1", "echo done | sudo tee /etc/conc"]}
        ],
        validate={},
        distribute=[{"type": "VHD", "runOutputName": "vhd"}],
    )
    for name in names:
        rel.api.put_template(name, template)
    start = time.monotonic()
    threads = [threading.Thread(target=rel.api.run, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finals = {name: rel.api.watch(name, timeout=1800, interval=1.0) for name in names}
    wall = time.monotonic() - start
    assert rel.runtime.proc is not None
    peak = _peak_rss_mb(rel.runtime.proc.pid)
    failed = [name for name, f in finals.items() if f["runState"] != "Succeeded"]
    leaks = wait_clean(rel.provider_state, rel.cache_dir, rel.store)
    record(
        "concurrency",
        f"{n} builds started at once (2 cores)",
        n,
        lost=len(failed),
        leaked=leaks.total(),
        note=f"all done in {wall:.0f} s; runtime peak RSS {peak:.0f} MB",
    )
    assert not failed, {name: finals[name] for name in failed}
    assert leaks.total() == 0, leaks
