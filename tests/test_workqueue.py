"""The controller work queue (controlplane/workqueue.py): de-duplication, never two workers on one key,
no change lost while a key is processed, exponential backoff, delayed adds and shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

from kaip.controlplane.workqueue import WorkQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def drain(q: WorkQueue) -> list[Hashable]:
    """Every key ready now, each marked done."""
    out = []
    while (key := q.get(timeout=0)) is not None:
        out.append(key)
        q.done(key)
    return out


def test_keys_come_out_in_order() -> None:
    q = WorkQueue()
    for key in ("a", "b", "c"):
        q.add(key)
    assert drain(q) == ["a", "b", "c"]


def test_a_key_is_queued_at_most_once() -> None:
    q = WorkQueue()
    for key in ("a", "b", "a", "a", "b"):
        q.add(key)
    assert len(q) == 2
    assert q.adds == 2
    assert drain(q) == ["a", "b"]
    assert q.get(timeout=0) is None


def test_a_key_added_while_processing_waits_for_done_then_runs_again() -> None:
    q = WorkQueue()
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.add("a")  # the object changed while its worker was busy
    q.add("a")
    # Not handed to a second worker while the first still holds it.
    assert len(q) == 0
    assert q.get(timeout=0) is None
    q.done("a")
    # Processed again, exactly once, after done().
    assert q.get(timeout=0) == "a"
    q.done("a")
    assert q.get(timeout=0) is None


def test_done_without_new_adds_does_not_requeue() -> None:
    q = WorkQueue()
    q.add("a")
    q.done(q.get(timeout=0) or "")
    assert len(q) == 0


def test_workers_never_process_one_key_concurrently_and_lose_no_add() -> None:
    q = WorkQueue()
    keys = ["k0", "k1", "k2"]
    lock = threading.Lock()
    active: set[Hashable] = set()
    overlaps: list[Hashable] = []
    # Each add bumps a version; a worker records the latest version it has seen for its key.
    version = dict.fromkeys(keys, 0)
    seen = dict.fromkeys(keys, 0)

    def worker() -> None:
        while (key := q.get(timeout=2)) is not None:
            with lock:
                if key in active:
                    overlaps.append(key)
                active.add(key)
                observed = version[key]
            time.sleep(0.001)
            with lock:
                seen[key] = max(seen[key], observed)
                active.discard(key)
            q.done(key)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(300):
        key = keys[i % len(keys)]
        with lock:
            version[key] += 1
        q.add(key)
        if i % 50 == 0:
            time.sleep(0.005)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and seen != version:
        time.sleep(0.01)
    q.shutdown()
    for t in threads:
        t.join(timeout=5)
    assert overlaps == []
    # Every key was processed after its last add: nothing that changed was left unreconciled.
    assert seen == version


def test_rate_limited_backoff_doubles_up_to_the_cap_and_forget_resets() -> None:
    q = WorkQueue(base_delay=0.1, max_delay=1.0, clock=FakeClock())
    delays = [q.add_rate_limited("a") for _ in range(6)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert q.retries == 6
    # Other keys have their own count.
    assert q.add_rate_limited("b") == 0.1
    q.forget("a")
    assert q.add_rate_limited("a") == 0.1


def test_rate_limited_key_is_held_back_for_its_delay() -> None:
    clock = FakeClock()
    q = WorkQueue(base_delay=1.0, max_delay=60.0, clock=clock)
    q.add_rate_limited("a")
    assert q.get(timeout=0) is None
    clock.advance(0.99)
    assert q.get(timeout=0) is None
    clock.advance(0.01)
    assert q.get(timeout=0) == "a"
    q.done("a")
    q.add_rate_limited("a")  # the second failure waits twice as long
    clock.advance(1.5)
    assert q.get(timeout=0) is None
    clock.advance(0.5)
    assert q.get(timeout=0) == "a"


def test_add_after_uses_the_injected_clock_and_orders_by_due_time() -> None:
    clock = FakeClock()
    q = WorkQueue(clock=clock)
    q.add_after("late", 30)
    q.add_after("early", 10)
    q.add_after("now", 0)  # no delay: queued at once
    assert drain(q) == ["now"]
    clock.advance(10)
    assert drain(q) == ["early"]
    clock.advance(19.5)
    assert drain(q) == []
    clock.advance(0.5)
    assert drain(q) == ["late"]


def test_delayed_add_of_an_already_queued_key_is_deduplicated() -> None:
    clock = FakeClock()
    q = WorkQueue(clock=clock)
    q.add("a")
    q.add_after("a", 5)
    q.add_after("a", 5)
    clock.advance(5)
    assert q.get(timeout=0) == "a"
    assert q.get(timeout=0) is None  # all three adds collapsed into one pass


def test_delayed_add_due_while_processing_runs_after_done() -> None:
    clock = FakeClock()
    q = WorkQueue(clock=clock)
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.add_after("a", 1)
    clock.advance(1)
    assert q.get(timeout=0) is None
    q.done("a")
    assert q.get(timeout=0) == "a"


def test_get_with_a_real_clock_waits_for_a_delayed_key() -> None:
    q = WorkQueue()
    q.add_after("a", 0.05)
    started = time.monotonic()
    assert q.get(timeout=5) == "a"
    assert 0.04 <= time.monotonic() - started < 2


def test_get_times_out_on_an_empty_queue() -> None:
    q = WorkQueue()
    started = time.monotonic()
    assert q.get(timeout=0.05) is None
    assert time.monotonic() - started >= 0.04


def test_shutdown_wakes_blocked_workers_and_refuses_new_keys() -> None:
    q = WorkQueue()
    results: list[Hashable | None] = []
    workers = [threading.Thread(target=lambda: results.append(q.get())) for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(0.05)
    q.shutdown()
    for w in workers:
        w.join(timeout=2)
        assert not w.is_alive()
    assert results == [None, None, None]
    q.add("late")
    assert len(q) == 0
    assert q.get(timeout=0) is None


def test_shutdown_stops_handing_out_queued_keys() -> None:
    q = WorkQueue()
    q.add("a")
    q.shutdown()
    assert q.get(timeout=0) is None
