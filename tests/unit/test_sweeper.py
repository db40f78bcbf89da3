"""The outbox and its sweeper: no accepted job waits forever, none is sent twice for nothing."""

from __future__ import annotations

import dataclasses

from difflane.dispatch.sweeper import OutboxDispatcher, Sweeper
from difflane.errors import Unavailable
from difflane.jobs import Job
from difflane.testing import MemoryJobStore, MemoryQueue
from tests.conftest import make_job
from tests.fakes.dispatch_outbox import MemoryOutbox


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _FlakyQueue(MemoryQueue):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 0
        self.sent: list[str] = []

    def dispatch(self, job: Job) -> None:
        if self.failures:
            self.failures -= 1
            raise Unavailable("queue down (test)")
        self.sent.append(job.id)
        super().dispatch(job)


def _parts() -> tuple[MemoryJobStore, MemoryOutbox, _FlakyQueue, Sweeper, OutboxDispatcher, _Clock]:
    clock = _Clock()
    store, outbox, queue = MemoryJobStore(), MemoryOutbox(clock), _FlakyQueue()
    sweeper = Sweeper(store, outbox, queue.dispatch, interval_s=0, grace_s=30, abandon_s=600, clock=clock)
    return store, outbox, queue, sweeper, OutboxDispatcher(queue, outbox, sweeper), clock


def _accept(store: MemoryJobStore, outbox: MemoryOutbox, dispatcher: OutboxDispatcher) -> Job:
    """What the API does with the Azure store: outbox entry, record, then dispatch."""
    job = make_job()
    outbox.add(job)
    created, _ = store.create(job)
    dispatcher.dispatch(created)
    return created


def test_a_sent_job_leaves_no_entry() -> None:
    store, outbox, queue, sweeper, dispatcher, clock = _parts()
    _accept(store, outbox, dispatcher)
    assert outbox.entries == {}
    clock.now += 100
    assert sweeper.sweep() == 0 and len(queue.sent) == 1


def test_a_failed_send_is_accepted_and_sent_by_the_next_sweep() -> None:
    store, outbox, queue, sweeper, dispatcher, _ = _parts()
    queue.failures = 1
    job = _accept(store, outbox, dispatcher)  # no exception: the job is accepted
    assert queue.sent == [] and job.id in outbox.entries
    assert sweeper.sweep() == 1  # flagged by the failure: no grace wait
    assert queue.sent == [job.id] and outbox.entries == {}
    assert queue.receive(["fast"], 0.1) is not None


def test_a_crash_between_record_and_send_is_found_after_the_grace() -> None:
    store, outbox, queue, sweeper, _, clock = _parts()
    job = make_job()
    outbox.add(job)
    store.create(job)  # ... and the API process died here
    assert sweeper.sweep() == 0  # still within the grace: its create may be in flight
    clock.now += 31
    assert sweeper.sweep() == 1 and queue.sent == [job.id]


def test_an_entry_without_a_record_is_dropped_after_a_while() -> None:
    _, outbox, queue, sweeper, _, clock = _parts()
    outbox.add(make_job())  # the create died before writing the record
    clock.now += 31
    assert sweeper.sweep() == 0 and len(outbox.entries) == 1
    clock.now += 600
    sweeper.sweep()
    assert outbox.entries == {} and queue.sent == []


def test_a_job_that_moved_on_is_not_sent_again() -> None:
    store, outbox, queue, sweeper, _, clock = _parts()
    job = make_job()
    outbox.add(job)
    created, _ = store.create(job)
    store.update(created.cancel(), created.version)
    clock.now += 31
    assert sweeper.sweep() == 0 and outbox.entries == {} and queue.sent == []


def test_a_sweep_that_fails_keeps_the_entry() -> None:
    store, outbox, queue, sweeper, _, clock = _parts()
    job = make_job()
    outbox.add(job)
    store.create(job)
    clock.now += 31
    queue.failures = 1
    assert sweeper.sweep() == 0 and job.id in outbox.entries
    assert sweeper.sweep() == 1 and outbox.entries == {}


def test_a_failed_move_to_another_lane_is_left_to_the_sweeper() -> None:
    store, outbox, queue, sweeper, dispatcher, _ = _parts()
    created, _ = store.create(make_job())
    queue.failures = 1
    moved = store.update(dataclasses.replace(created, lane="big"), created.version)
    dispatcher.dispatch(moved)  # a worker moving the job: there was no entry before
    assert moved.id in outbox.entries
    assert sweeper.sweep() == 1 and queue.sent == [moved.id]


def test_the_sweeper_thread_starts_with_the_first_dispatch_and_stops() -> None:
    store = MemoryJobStore()
    outbox = MemoryOutbox()
    queue = _FlakyQueue()
    sweeper = Sweeper(store, outbox, queue.dispatch, interval_s=60)
    dispatcher = OutboxDispatcher(queue, outbox, sweeper)
    assert sweeper._thread is None
    dispatcher.ping()
    assert sweeper._thread is not None and sweeper._thread.is_alive()
    dispatcher.close()
    assert not sweeper._thread.is_alive()
