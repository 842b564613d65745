"""Build slot pools (imagebuilder/store/slots.py) on a real Azurite: the limit, first come first served,
idempotent calls, stale entries reclaimed, and many writers racing for one pool."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from imagebuilder.pipeline.messages import RunRef
from imagebuilder.store import Store
from imagebuilder.store.slots import SlotPool
from local_runtime.azurite import Azurite


@pytest.fixture
def pool(store_azurite: Azurite, prefix: str) -> SlotPool:
    return SlotPool(store_azurite.connection_string, prefix=prefix)


def ref(i: int) -> RunRef:
    return RunRef(subscription_id="sub", resource_group="rg", template_name=f"t{i}", run_id=f"r{i}")


def live(_: RunRef) -> bool:
    return False


def test_at_most_the_limit_hold_and_the_rest_queue_in_arrival_order(pool: SlotPool) -> None:
    grants = [pool.acquire("p", f"h{i}", ref(i), 2, live) for i in range(5)]
    assert [g.granted for g in grants] == [True, True, False, False, False]
    assert [g.position for g in grants] == [0, 0, 1, 2, 3]
    assert [g.ticket for g in grants] == [1, 2, 3, 4, 5] and [g.grant for g in grants] == [1, 2, 0, 0, 0]
    assert grants[-1].in_use == 2 and grants[-1].waiting == 3
    # asking again changes nothing (the host retries activities): same answers, no second place
    assert pool.acquire("p", "h0", ref(0), 2, live).granted
    again = pool.acquire("p", "h3", ref(3), 2, live)
    assert not again.granted and again.position == 2
    assert [e["holder"] for e in pool.state("p").queue] == ["h2", "h3", "h4"]


def test_a_freed_slot_goes_to_the_first_in_line_not_to_who_asks_first(pool: SlotPool) -> None:
    for i in range(4):
        pool.acquire("p", f"h{i}", ref(i), 2, live)
    assert pool.release("p", "h0")
    late = pool.acquire("p", "h3", ref(3), 2, live)  # second in line asks first: it must keep waiting
    assert not late.granted and late.position == 2
    assert pool.acquire("p", "h2", ref(2), 2, live).granted
    assert not pool.acquire("p", "h3", ref(3), 2, live).granted
    assert pool.release("p", "h1")
    assert pool.acquire("p", "h3", ref(3), 2, live).granted
    assert not pool.release("p", "h0"), "a second release is a no-op"
    newcomer = pool.acquire("p", "h9", ref(9), 2, live)
    assert not newcomer.granted and newcomer.position == 1


def test_leaving_the_queue_moves_everyone_behind_up(pool: SlotPool) -> None:
    for i in range(4):
        pool.acquire("p", f"h{i}", ref(i), 1, live)
    assert pool.release("p", "h1")  # canceled while queued
    assert pool.acquire("p", "h3", ref(3), 1, live).position == 2


def test_stale_holders_and_waiters_are_reclaimed_by_the_next_acquire(pool: SlotPool) -> None:
    over = {"t0", "t2"}  # h0 holds, h2 waits; both their runs are over (terminal or gone)

    def is_stale(run: RunRef) -> bool:
        return run.template_name in over

    pool.acquire("p", "h0", ref(0), 1, live)
    pool.acquire("p", "h1", ref(1), 1, live)
    pool.acquire("p", "h2", ref(2), 1, live)
    pool.acquire("p", "h3", ref(3), 1, live)
    grant = pool.acquire("p", "h1", ref(1), 1, is_stale)
    assert grant.granted and grant.reclaimed == ["h0"]
    behind = pool.acquire("p", "h3", ref(3), 1, is_stale)  # h2 is in its way: dropped
    assert not behind.granted and behind.position == 1 and behind.reclaimed == ["h2"]
    state = pool.state("p")
    assert list(state.holders) == ["h1"] and [e["holder"] for e in state.queue] == ["h3"]


def test_a_stale_check_uses_the_run_record(store: Store, pool: SlotPool) -> None:
    """The activity's rule (activities/build_slots.run_is_over): terminal or missing run records."""
    from activities import build_slots

    store.templates.create("sub", "rg", "t0", {"location": "westeurope", "properties": {}})
    store.runs.create(ref(0), template_snapshot={})
    original = build_slots.store
    build_slots.store = lambda: store  # type: ignore[assignment]
    try:
        assert not build_slots.run_is_over(ref(0))
        store.runs.set_status(ref(0), run_state="Failed", message="killed")
        assert build_slots.run_is_over(ref(0))
        assert build_slots.run_is_over(ref(5)), "a run whose record is gone holds nothing"
    finally:
        build_slots.store = original  # type: ignore[assignment]


def test_a_lowered_limit_lets_holders_finish_and_admits_nobody_meanwhile(pool: SlotPool) -> None:
    for i in range(3):
        pool.acquire("p", f"h{i}", ref(i), 3, live)
    assert not pool.acquire("p", "h3", ref(3), 1, live).granted
    pool.release("p", "h0")
    pool.release("p", "h1")
    assert not pool.acquire("p", "h3", ref(3), 1, live).granted
    pool.release("p", "h2")
    assert pool.acquire("p", "h3", ref(3), 1, live).granted


def test_pools_are_separate(pool: SlotPool) -> None:
    assert pool.acquire("a", "h0", ref(0), 1, live).granted
    assert pool.acquire("b", "h1", ref(1), 1, live).granted


def test_writers_racing_never_exceed_the_limit_and_serve_in_arrival_order(
    store_azurite: Azurite, prefix: str
) -> None:
    """Eight clients (as eight worker processes would be) enqueue at once, then poll until each holds a
    slot for a moment; at no time do more than two hold one, and slots go out in queue order."""
    clients = [SlotPool(store_azurite.connection_string, prefix=prefix) for _ in range(8)]
    lock = threading.Lock()
    holding: set[str] = set()
    peak = 0
    order: list[str] = []
    errors: list[BaseException] = []
    for i, c in enumerate(clients):  # arrival order is fixed; the rest races
        c.acquire("p", f"h{i}", ref(i), 2, live)

    def worker(i: int) -> None:
        nonlocal peak
        c, name = clients[i], f"h{i}"
        try:
            while not c.acquire("p", name, ref(i), 2, live).granted:
                pass
            with lock:
                holding.add(name)
                order.append(name)
                peak = max(peak, len(holding))
            # hold a little, as a build would, then give it back
            c.state("p")
            with lock:
                holding.discard(name)
            c.release("p", name)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(order) == 8 and peak <= 2
    # the first two held from the start; the rest were granted strictly in arrival order
    assert order[2:] == [f"h{i}" for i in range(2, 8)]
    state = clients[0].state("p")
    assert state.tickets == 8 and state.grants == 8 and not state.holders and not state.queue


def test_only_entries_in_the_way_are_checked(pool: SlotPool) -> None:
    checked: list[str] = []

    def spy(run: RunRef) -> bool:
        checked.append(run.template_name)
        return False

    pool.acquire("p", "h0", ref(0), 2, spy)
    pool.acquire("p", "h1", ref(1), 2, spy)
    assert checked == [], "a free slot needs no check"
    pool.acquire("p", "h2", ref(2), 2, spy)
    pool.acquire("p", "h3", ref(3), 2, spy)
    pool.acquire("p", "h4", ref(4), 2, spy)
    checked.clear()
    pool.acquire("p", "h3", ref(3), 2, spy)  # second in line: the holders and h2 are in its way
    assert sorted(checked) == ["t0", "t1", "t2"]


def test_the_acquire_activity_waits_for_a_slot_when_asked(
    store_azurite: Azurite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """activities/build_slots.acquire_build_slot with waitSeconds: granted as soon as the slot is given
    back while it waits; without, it answers at once (the orchestration then waits on a durable timer)."""
    from activities import _common, build_slots
    from imagebuilder.settings import Settings
    from imagebuilder.store import open_store
    from imagebuilder.store.slots import open_slots

    monkeypatch.setenv("AzureWebJobsStorage", store_azurite.connection_string)
    monkeypatch.setenv("IMAGEBUILDER_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("IMAGEBUILDER_MAX_CONCURRENT_BUILDS", "1")
    _common.settings.cache_clear()
    _common.store.cache_clear()
    try:
        cfg = Settings.from_env()
        st = open_store(cfg.storage_connection)
        st.templates.create("sub", "rg", "t0", {"location": "westeurope", "properties": {}})
        st.runs.create(ref(0), template_snapshot={})  # h0's run is live: its slot is not stale
        slots = open_slots(cfg.storage_connection)
        assert slots.acquire(cfg.build_slot_pool, "h0", ref(0), 1, live).granted
        acquire = build_slots.acquire_build_slot._function.get_user_function()
        build = {"run": ref(1).model_dump(mode="json"), "template": {}}
        assert acquire({"build": build, "holder": "h1"})["granted"] is False
        answers: list[dict[str, object]] = []
        waiter = threading.Thread(
            target=lambda: answers.append(acquire({"build": build, "holder": "h1", "waitSeconds": 20}))
        )
        waiter.start()
        time.sleep(1)
        slots.release(cfg.build_slot_pool, "h0")
        waiter.join(30)
        assert answers and answers[0]["granted"] is True and answers[0]["ticket"] == 2
    finally:
        _common.settings.cache_clear()
        _common.store.cache_clear()
