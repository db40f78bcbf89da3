"""The Dispatcher + WorkSource contract (leases, redelivery, settlement), against every queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from difflane.dispatch.embedded import EmbeddedQueue
from difflane.store.sqlite import Database
from difflane.testing import MemoryQueue
from tests.conftest import make_job
from tests.fakes.servicebus import FakeServiceBusQueue

LEASE = 0.5


@pytest.fixture(params=["memory", "embedded", "servicebus"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MemoryQueue | EmbeddedQueue]:
    q: Any
    if request.param == "memory":
        q = MemoryQueue(lease_seconds=LEASE)
    elif request.param == "servicebus":  # the Service Bus adapter on its SDK-shaped fake
        q = FakeServiceBusQueue(["fast", "long", "big"], lock_duration=LEASE, max_lock_renewal_s=LEASE)
    else:
        q = EmbeddedQueue(Database(tmp_path / "q.db"), tmp_path / "run", lease_seconds=LEASE)
    yield q
    q.close()


def test_dispatch_then_receive(queue: MemoryQueue | EmbeddedQueue) -> None:
    job = make_job()
    queue.dispatch(job)
    d = queue.receive(["fast"], timeout=1)
    assert d is not None and d.job_id == job.id and d.lane == "fast" and d.attempt == 1


def test_receive_times_out_empty(queue: MemoryQueue | EmbeddedQueue) -> None:
    assert queue.receive(["fast"], timeout=0.1) is None


def test_dispatch_is_idempotent(queue: MemoryQueue | EmbeddedQueue) -> None:
    job = make_job()
    queue.dispatch(job)
    queue.dispatch(job)
    assert queue.backlog("fast") == 1
    d = queue.receive(["fast"], timeout=1)
    assert d is not None
    d.ack()
    assert queue.receive(["fast"], timeout=0.1) is None


def test_lanes_are_separate(queue: MemoryQueue | EmbeddedQueue) -> None:
    queue.dispatch(make_job(lane="long"))
    assert queue.receive(["fast"], timeout=0.1) is None
    assert queue.backlog("long") == 1 and queue.backlog("fast") == 0
    d = queue.receive(["fast", "long"], timeout=1)
    assert d is not None and d.lane == "long"


def test_fifo_within_a_lane(queue: MemoryQueue | EmbeddedQueue) -> None:
    jobs = [make_job() for _ in range(3)]
    for j in jobs:
        queue.dispatch(j)
        time.sleep(0.002)
    got = []
    for _ in jobs:
        d = queue.receive(["fast"], timeout=1)
        assert d is not None
        got.append(d.job_id)
        d.ack()
    assert got == [j.id for j in jobs]


def test_held_delivery_is_invisible_until_lease_expires(queue: MemoryQueue | EmbeddedQueue) -> None:
    queue.dispatch(make_job())
    first = queue.receive(["fast"], timeout=1)
    assert first is not None
    assert queue.backlog("fast") == 0
    assert queue.receive(["fast"], timeout=0.1) is None
    again = queue.receive(["fast"], timeout=LEASE * 4)  # the holder "died": redelivered
    assert again is not None and again.job_id == first.job_id and again.attempt == 2


def test_renew_keeps_the_lease(queue: MemoryQueue | EmbeddedQueue) -> None:
    queue.dispatch(make_job())
    d = queue.receive(["fast"], timeout=1)
    assert d is not None
    for _ in range(3):
        time.sleep(LEASE / 2)
        assert d.renew(LEASE)
    assert queue.receive(["fast"], timeout=0.05) is None


def test_settlement_with_a_lost_lease_is_ignored(queue: MemoryQueue | EmbeddedQueue) -> None:
    queue.dispatch(make_job())
    stale = queue.receive(["fast"], timeout=1)
    assert stale is not None
    fresh = queue.receive(["fast"], timeout=LEASE * 4)
    assert fresh is not None
    assert not stale.renew(LEASE)
    stale.ack()  # must not remove the entry the new holder owns
    assert fresh.renew(LEASE)
    fresh.ack()
    assert queue.receive(["fast"], timeout=0.1) is None


def test_retry_with_delay(queue: MemoryQueue | EmbeddedQueue) -> None:
    queue.dispatch(make_job())
    d = queue.receive(["fast"], timeout=1)
    assert d is not None
    d.retry(0.3)
    assert queue.receive(["fast"], timeout=0.05) is None
    again = queue.receive(["fast"], timeout=2)
    assert again is not None and again.attempt == 2


def test_dead_letter_removes_the_entry(queue: MemoryQueue | EmbeddedQueue) -> None:
    queue.dispatch(make_job())
    d = queue.receive(["fast"], timeout=1)
    assert d is not None
    d.dead_letter("max_attempts")
    assert queue.receive(["fast"], timeout=LEASE * 2) is None
    assert queue.backlog("fast") == 0


def test_cancel_drops_a_waiting_entry(queue: MemoryQueue | EmbeddedQueue) -> None:
    if isinstance(queue, FakeServiceBusQueue):
        pytest.skip("Service Bus cannot remove a message by id: its worker completes it without work")
    job = make_job()
    queue.dispatch(job)
    queue.cancel(job)
    assert queue.receive(["fast"], timeout=0.1) is None


def test_a_blocked_receive_wakes_on_dispatch(queue: MemoryQueue | EmbeddedQueue) -> None:
    got: list[float] = []

    def consume() -> None:
        d = queue.receive(["fast"], timeout=5)
        if d is not None:
            got.append(time.monotonic())

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.2)  # the consumer is now waiting
    sent = time.monotonic()
    queue.dispatch(make_job())
    t.join(timeout=6)
    assert got, "the waiting consumer never got the job"
    # Not a speed test: only proves the wake-up is not the 1 s fallback poll.
    assert got[0] - sent < 0.9


def test_each_job_goes_to_one_consumer(queue: MemoryQueue | EmbeddedQueue) -> None:
    jobs = [make_job() for _ in range(20)]
    for j in jobs:
        queue.dispatch(j)
    seen: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        while (d := queue.receive(["fast"], timeout=0.2)) is not None:
            with lock:
                seen.append(d.job_id)
            d.ack()

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == sorted(j.id for j in jobs)


def test_wake_makes_a_waiting_receive_return(queue: MemoryQueue | EmbeddedQueue) -> None:
    returned: list[float] = []

    def consume() -> None:
        assert queue.receive(["fast"], timeout=30) is None
        returned.append(time.monotonic())

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.2)
    woke = time.monotonic()
    queue.wake()
    t.join(timeout=10)
    assert returned and returned[0] - woke < 5  # far below the 30 s timeout


def test_dispatch_after_a_lane_change_moves_the_entry(queue: MemoryQueue | EmbeddedQueue) -> None:
    import dataclasses

    job = make_job()
    queue.dispatch(job)
    held = queue.receive(["fast"], timeout=1)
    assert held is not None
    queue.dispatch(dataclasses.replace(job, lane="big"))  # e.g. moved after running out of memory
    held.ack()  # the old holder's settlement must not drop the moved entry
    assert queue.backlog("fast") == 0 and queue.backlog("big") == 1
    moved = queue.receive(["big"], timeout=1)
    assert moved is not None and moved.job_id == job.id


def test_a_zero_timeout_receive_takes_a_ready_job_and_never_waits_for_one(queue: MemoryQueue | EmbeddedQueue) -> None:
    assert queue.receive(["fast"], 0) is None
    job = make_job()
    queue.dispatch(job)
    d = queue.receive(["fast"], 0)
    assert d is not None and d.job_id == job.id
    assert queue.receive(["fast"], 0) is None  # the job is held now


def test_a_zero_timeout_receive_leaves_a_wake_for_the_receive_that_waits(queue: MemoryQueue | EmbeddedQueue) -> None:
    # The batcher looks at the queue (timeout 0) before it blocks; a wake() (shutdown) that came
    # just before must still end the blocking receive, not be spent on the look.
    queue.wake()
    assert queue.receive(["fast"], 0) is None
    started = time.monotonic()
    assert queue.receive(["fast"], timeout=20) is None
    assert time.monotonic() - started < 10  # far below the 20 s timeout: it returned on the wake


def test_receive_ready_takes_the_waiting_jobs_in_order_up_to_the_limit(queue: MemoryQueue | EmbeddedQueue) -> None:
    assert list(queue.receive_ready(["fast"], 4)) == []
    jobs = [make_job() for _ in range(5)]
    for j in jobs:
        queue.dispatch(j)
        time.sleep(0.002)
    queue.dispatch(make_job(lane="long"))
    first = list(queue.receive_ready(["fast"], 3))
    assert [d.job_id for d in first] == [j.id for j in jobs[:3]]
    assert all(d.lane == "fast" and d.attempt == 1 for d in first)
    rest = list(queue.receive_ready(["fast"], 3))
    assert [d.job_id for d in rest] == [j.id for j in jobs[3:]]  # fewer than asked: all there is
    assert list(queue.receive_ready(["fast"], 3)) == []  # the taken jobs are leased
    assert queue.backlog("long") == 1  # another lane's job was not taken


def test_each_delivery_of_receive_ready_is_settled_on_its_own(queue: MemoryQueue | EmbeddedQueue) -> None:
    jobs = [make_job() for _ in range(3)]
    for j in jobs:
        queue.dispatch(j)
        time.sleep(0.002)
    done, back, kept = queue.receive_ready(["fast"], 3)
    done.ack()
    back.retry(0)
    assert kept.renew(LEASE * 4)
    again = queue.receive(["fast"], timeout=1)
    assert again is not None and again.job_id == back.job_id  # only the given-back job is ready
    again.ack()
    assert queue.receive(["fast"], timeout=LEASE * 2) is None  # the renewed one is still held
    kept.ack()


def test_receive_ready_with_no_room_takes_nothing(queue: MemoryQueue | EmbeddedQueue) -> None:
    queue.dispatch(make_job())
    assert list(queue.receive_ready(["fast"], 0)) == []
    assert queue.backlog("fast") == 1
