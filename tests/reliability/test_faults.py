"""Faults: each ends in a clear failed (or recovered) state, with cleanup done (the audit) and the error
naming the cause. Short suite: a customizer that hangs past its timeout, one that fork-bombs, and the
disk filling up while capture writes the disk image (the provider's state on a small tmpfs). Long
suite adds a memory eater, an unreachable package mirror, Azurite stopped and restarted mid-run, and a
corrupted SQLite page in a copy of the runtime's durable state."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from examples.demo import LocalRuntime
from local_runtime.azurite import Azurite
from tests.reliability.audit import wait_clean
from tests.reliability.conftest import LONG, Rel, open_rel, record

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(1800)]
long_only = pytest.mark.skipif(not LONG, reason="long suite only (IMAGEBUILDER_RELIABILITY=long)")


def _run(rel: Rel, name: str, inline: list[str], **tags: str) -> dict[str, Any]:
    template = rel.template(
        "busybox-webpage.json",
        customize=[{"type": "Shell", "name": "fault", "inline": inline}],
        validate={},
        distribute=[{"type": "VHD", "runOutputName": "vhd"}],
    )
    template["tags"] = {**template.get("tags", {}), **tags}
    return rel.build(name, template, timeout=900)


def _check(rel: Rel, case: str, final: dict[str, Any], *words: str, state: str = "Failed") -> None:
    leaks = wait_clean(rel.provider_state, rel.cache_dir, rel.store)
    message = str(final.get("message", ""))
    named = all(w.lower() in message.lower() for w in words)
    ok = final["runState"] == state and named and leaks.total() == 0
    record("fault", case, 1, lost=0 if ok else 1, leaked=leaks.total(), note=message[:160])
    assert final["runState"] == state, final
    assert named, (words, message)
    assert leaks.total() == 0, leaks


def test_customizer_hanging_past_its_timeout(rel: Rel) -> None:
    final = _run(
        rel, "hang", ["echo hanging", "sleep 3600"], **{"imagebuilder.local.stepTimeoutMinutes": "0.1"}
    )
    _check(rel, "customizer hangs past its step timeout (6 s)", final, "timed out")


def test_customizer_fork_bomb(rel: Rel) -> None:
    start = time.monotonic()
    final = _run(
        rel,
        "forkbomb",
        ["bomb() { bomb | bomb & }; bomb", "sleep 5", "exit 7"],
        **{"imagebuilder.local.stepTimeoutMinutes": "0.2"},
    )
    _check(rel, f"customizer fork-bombs (ended in {time.monotonic() - start:.0f} s)", final, "fault")


def test_disk_filling_during_capture(e2e_azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The provider's state dir on a 48 MB tmpfs: the base (in the cache, elsewhere) and a step writing
    28 MB fit, the disk image of that tree does not. The run fails naming the full filesystem and what to
    do, cleanup leaves nothing, and once the filesystem is grown the same template builds."""
    base = tmp_path_factory.mktemp("rel-small")
    small = base / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0755", "tmpfs", str(small)], check=True)
    try:
        cache = tmp_path_factory.getbasetemp() / "rel-cache"
        with open_rel(e2e_azurite, base, cache, provider=small / "state") as rel:
            template = rel.template(
                "busybox-webpage.json",
                customize=[
                    {
                        "type": "Shell",
                        "name": "fill",
                        "inline": ["sudo dd if=/dev/urandom of=/var/fill bs=1M count=28"],
                    }
                ],
                validate={},
                distribute=[{"type": "VHD", "runOutputName": "vhd"}],
            )
            final = rel.build("diskfull", template, timeout=900)
            log = rel.log_text("diskfull")
            # the tool writing the disk image met the full filesystem (not a step, not a precheck)
            assert "No space left on device" in log, log[-3000:]
            _check(
                rel,
                "disk fills while capture writes the disk image (state on a 48 MB tmpfs)",
                final,
                "no space left on device",
                str(small),
                "MiB free when capture began",
                "needs at least",
                "IMAGEBUILDER_STATE_DIR",
            )
            subprocess.run(["mount", "-o", "remount,size=256m", str(small)], check=True)  # space freed
            rel.api.run("diskfull")
            again = rel.api.watch("diskfull", timeout=900, interval=0.5)
            leaks = wait_clean(rel.provider_state, rel.cache_dir, rel.store)
            record(
                "fault",
                "build after the disk-full failure, with space freed",
                1,
                lost=0 if again["runState"] == "Succeeded" else 1,
                leaked=leaks.total(),
                note=str(again.get("message", ""))[:160],
            )
            assert again["runState"] == "Succeeded", again
            assert leaks.total() == 0, leaks
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


@long_only
def test_customizer_eating_memory(rel: Rel) -> None:
    final = _run(rel, "memeater", ["dd if=/dev/zero of=/dev/null bs=8G count=1", "echo survived"])
    _check(rel, "customizer asks for 8 GB of memory", final, "exit code", "out of memory")


@long_only
def test_package_mirror_unreachable(rel: Rel) -> None:
    final = _run(
        rel,
        "nomirror",
        # the mirror by address, as apt would reach it (BusyBox's wget in this base segfaults on any
        # failed connection, confined or not, so nc stands in for the download)
        ["echo 'GET /debian/dists/bookworm/Release' | nc -w 5 151.101.2.132 80"],
        **{"imagebuilder.local.network": "off"},
    )
    _check(rel, "package mirror unreachable (network off)", final, "exit code", "unreachable")


@long_only
def test_azurite_stopped_and_restarted_mid_run(rel: Rel, e2e_azurite: Azurite) -> None:
    template = rel.template(
        "busybox-webpage.json",
        customize=[{"type": "Shell", "name": "long", "inline": ["echo long-start", "sleep 20"]}],
        validate={},
        distribute=[{"type": "VHD", "runOutputName": "vhd"}],
    )
    rel.api.put_template("storage-outage", template)
    rel.api.run("storage-outage")
    rel.wait_log("storage-outage", "long-start")
    e2e_azurite.stop()
    time.sleep(15)
    e2e_azurite.start()  # same ports and data folder
    final = rel.api.watch("storage-outage", timeout=900, interval=1.0)
    _check(rel, "Azurite stopped for 15 s mid-run, restarted", final, state="Succeeded")


@long_only
def test_corrupted_sqlite_page_in_a_copy_of_the_state(rel: Rel, tmp_path: Path) -> None:
    """A copy of the runtime's state with one page of durable.sqlite overwritten: the runtime started on it
    must refuse with an error naming the file, or start and answer; it must not hang or serve garbage."""
    rel.build(
        "before-copy",
        rel.template("busybox-webpage.json", validate={}, distribute=[{"type": "VHD", "runOutputName": "v"}]),
    )
    copy = tmp_path / "state-copy"
    db = rel.runtime.state_dir / "durable.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copytree(rel.runtime.state_dir, copy, ignore=shutil.ignore_patterns("*.lock", "host.lock"))
    with open(copy / "durable.sqlite", "r+b") as fh:
        fh.seek(4096 * 2)
        fh.write(b"\xde\xad\xbe\xef" * 1024)
    other = LocalRuntime(state_dir=copy, env=rel.env)
    outcome = ""
    try:
        other.start(timeout=60)
        outcome = "started on the corrupted copy"
    except Exception as exc:  # the runtime refused: its message must say which file is damaged
        outcome = f"refused: {str(exc)[-300:]}"
    finally:
        other.stop()
    log = (copy / "runtime.log").read_text() if (copy / "runtime.log").is_file() else ""
    named = "durable.sqlite" in outcome + log or "malformed" in (outcome + log).lower()
    leaks = wait_clean(rel.provider_state, rel.cache_dir, rel.store)
    record(
        "fault",
        "corrupted SQLite page in a copy of the durable state",
        1,
        lost=0 if named else 1,
        leaked=leaks.total(),
        note=outcome[:160],
    )
    assert named, outcome + log[-2000:]
    assert leaks.total() == 0, leaks
