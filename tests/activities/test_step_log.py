"""The phase activities' step log (activities/_common.StepLog): the `started` line rides on the step's
first append, never on its own, and always comes first."""

from __future__ import annotations

import threading

from activities._common import StepLog
from imagebuilder.providers.base import MemoryLog


def test_the_started_line_goes_out_with_the_first_write() -> None:
    sink = MemoryLog()  # one chunk = one append to the run's log blob
    log = StepLog(sink, "customize[0] (Shell: one)")
    assert sink.chunks == [], "nothing is appended before the step writes"
    log.write("[customize] running\n")
    log.write("hello\n")
    assert sink.chunks == ["==> customize[0] (Shell: one): started\n[customize] running\n", "hello\n"]


def test_a_step_that_writes_nothing_gets_its_started_line_with_its_end_line() -> None:
    sink = MemoryLog()
    log = StepLog(sink, "generalize")
    log.write("==> generalize: succeeded in 0.1s\n")
    assert sink.chunks == ["==> generalize: started\n==> generalize: succeeded in 0.1s\n"]


def test_the_started_line_is_first_and_once_when_threads_race() -> None:
    sink = MemoryLog()
    log = StepLog(sink, "capture")
    go = threading.Barrier(8)

    def writer(i: int) -> None:
        go.wait()
        log.write(f"line {i}\n")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sink.text.startswith("==> capture: started\nline ")
    assert sink.text.count("started") == 1 and len(sink.chunks) == 8
