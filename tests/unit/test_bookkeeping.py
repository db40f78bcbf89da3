"""The batch bookkeeper: calls run in order on one thread beside the caller, and end() waits."""

from __future__ import annotations

import threading

from difflane.worker.bookkeeping import Bookkeeper


def test_submitted_calls_run_in_order_off_the_calling_thread() -> None:
    keeper = Bookkeeper()
    seen: list[tuple[int, int]] = []
    for i in range(5):
        keeper.submit(lambda i=i: seen.append((i, threading.get_ident())))  # type: ignore[misc]
    keeper.wait_submitted()
    assert [i for i, _ in seen] == list(range(5))
    assert {t for _, t in seen} != {threading.get_ident()} and len({t for _, t in seen}) == 1


def test_end_waits_for_a_periodic_call_in_flight_and_stops_it() -> None:
    keeper = Bookkeeper()
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def periodic() -> None:
        calls.append(1)
        started.set()
        release.wait(5)  # the timeout only guards against a hang

    keeper.begin(periodic, 0.0)
    assert started.wait(5)
    ender = threading.Thread(target=keeper.end)
    ender.start()
    ender.join(0.05)
    assert ender.is_alive()  # still waiting for the renewal in flight
    release.set()
    ender.join(5)
    assert not ender.is_alive()
    count = len(calls)
    keeper.submit(lambda: None)
    keeper.wait_submitted()
    assert len(calls) == count  # no periodic call after end()


def test_a_thread_that_ended_when_idle_is_replaced_by_the_next_submit() -> None:
    keeper = Bookkeeper(idle_exit_s=0.0)
    done: list[int] = []
    keeper.submit(lambda: done.append(1))
    keeper.wait_submitted()
    keeper.submit(lambda: done.append(2))
    keeper.wait_submitted()
    assert done == [1, 2]


def test_a_failing_call_does_not_stop_the_next() -> None:
    keeper = Bookkeeper()
    done: list[int] = []

    def boom() -> None:
        raise RuntimeError("boom")

    keeper.submit(boom)
    keeper.submit(lambda: done.append(1))
    keeper.wait_submitted()
    assert done == [1]
