"""Issue 9, "Job lifecycle": each interleaving an outside review proved, on the in-memory seams.

Every test here failed on the code before the fix it names (see docs/reliability.md).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from difflane import catalog
from difflane.blobs.base import output_key
from difflane.errors import IllegalTransition, Unavailable
from difflane.jobs import ErrorCode, Job, JobState, Principal
from difflane.lanes import Lane, Lanes
from difflane.testing import FakeRuntime, MemoryBlobStore, MemoryJobStore, MemoryQueue
from difflane.worker.batching import Batcher
from difflane.worker.executor import Executor, Outcome, WorkerConfig
from difflane.worker.runtime import RenderTimeout
from tests.conftest import make_job


class Rig:
    def __init__(self, *, lease_seconds: float = 5.0, lanes: Lanes | None = None) -> None:
        self.store, self.blobs = MemoryJobStore(), MemoryBlobStore()
        self.queue, self.runtime = MemoryQueue(lease_seconds=lease_seconds), FakeRuntime()
        config = WorkerConfig("w1", lease_seconds=lease_seconds, max_attempts=3, retry_backoff_seconds=0.0)
        self.give_back = False
        self.executor = Executor(
            self.store,
            self.blobs,
            catalog.builtin(),
            self.runtime,
            config,
            lanes=lanes,
            dispatcher=self.queue,
            should_give_back=lambda: self.give_back,
        )

    def submit(self, **changes: Any) -> Job:
        job, _ = self.store.create(make_job(**changes))
        self.queue.dispatch(job)
        return job

    def deliver(self, lane: str = "fast"):  # type: ignore[no-untyped-def]
        d = self.queue.receive([lane], timeout=1)
        assert d is not None
        return d

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        assert job is not None
        return job

    def cancel(self, job_id: str) -> None:
        current = self.get(job_id)
        self.store.update(current.cancel(), current.version)

    def during_render(self, action: Any) -> None:
        """Run ``action(step)`` inside the render, before the executor's step callback."""
        original = self.runtime.render

        def render(task, on_step, timeout=None):  # type: ignore[no-untyped-def]
            self.runtime.render = original  # type: ignore[method-assign]
            return original(task, lambda i, total: action(i) or on_step(i, total), timeout)

        self.runtime.render = render  # type: ignore[method-assign]


# --- 1. a cancel is never lost in a give-back ---------------------------------------------------


def test_a_cancel_requested_before_a_shutdown_give_back_ends_cancelled() -> None:
    rig = Rig()
    job = rig.submit(steps=20)

    def cancel_then_sigterm(step: int) -> None:
        if step == 2:
            rig.cancel(job.id)
            rig.give_back = True  # SIGTERM with grace 0: the next step gives the batch back

    rig.during_render(cancel_then_sigterm)
    assert rig.executor.execute(rig.deliver()) is Outcome.CANCELLED
    final = rig.get(job.id)
    assert final.state is JobState.CANCELLED and final.outputs == () and rig.blobs.blobs == {}
    assert rig.queue.backlog("fast") == 0


def test_a_cancel_requested_before_a_render_crash_ends_cancelled() -> None:
    rig = Rig()
    job = rig.submit()
    original = rig.runtime.render

    def cancel_and_crash(task, on_step, timeout=None):  # type: ignore[no-untyped-def]
        rig.cancel(job.id)
        raise RuntimeError("the render crashed")

    rig.runtime.render = cancel_and_crash  # type: ignore[method-assign]
    assert rig.executor.execute(rig.deliver()) is Outcome.CANCELLED
    rig.runtime.render = original  # type: ignore[method-assign]
    assert rig.get(job.id).state is JobState.CANCELLED
    assert rig.queue.receive(["fast"], 0.05) is None  # nothing left to bounce until max_attempts


def test_requeue_and_move_of_a_job_with_a_pending_cancel_cancel_it() -> None:
    running = make_job().start("w", 30).cancel()
    assert running.requeue("w").state is JobState.CANCELLED
    assert running.requeue("w", refund=True).state is JobState.CANCELLED
    assert running.move_to_lane("w", "long").state is JobState.CANCELLED


def test_a_legacy_queued_record_with_a_pending_cancel_is_settled_by_the_next_delivery() -> None:
    import dataclasses

    rig = Rig()
    job = rig.submit()
    current = rig.get(job.id)
    rig.store.update(dataclasses.replace(current, cancel_requested=True), current.version)  # the old bug's state
    assert rig.executor.execute(rig.deliver()) is Outcome.CANCELLED
    assert rig.get(job.id).state is JobState.CANCELLED


# --- 2. only real runs are attempts ---------------------------------------------------------------


def test_a_graceful_give_back_spends_no_attempt() -> None:
    rig = Rig()
    job = rig.submit(steps=10)
    rig.during_render(lambda step: setattr(rig, "give_back", step >= 1))
    assert rig.executor.execute(rig.deliver()) is Outcome.REQUEUED
    given_back = rig.get(job.id)
    assert given_back.state is JobState.QUEUED and given_back.attempts == 0
    rig.give_back = False
    assert rig.executor.execute(rig.deliver()) is Outcome.SUCCEEDED
    assert rig.get(job.id).attempts == 1


def test_a_lost_queue_lock_stops_the_job_without_extending_its_record_lease() -> None:
    rig = Rig(lease_seconds=0.3)
    job = rig.submit(steps=8)
    rig.runtime.step_seconds = 0.1  # a render longer than the lease: the keeper must renew
    delivery = rig.deliver()
    delivery.renew = lambda seconds: False  # type: ignore[method-assign]  # the queue lock is gone
    claimed_until = None

    def note_lease(step: int) -> None:
        nonlocal claimed_until
        if step == 1:
            claimed_until = rig.get(job.id).lease.expires_at  # type: ignore[union-attr]

    rig.during_render(note_lease)
    assert rig.executor.execute(delivery) is Outcome.SKIPPED  # stopped, wrote nothing
    left = rig.get(job.id)
    assert left.state is JobState.RUNNING and left.lease.expires_at == claimed_until  # type: ignore[union-attr]
    time.sleep(0.35)  # its lease runs out; the queue's redelivery takes it over
    rig.queue._entries[job.id].available_at = 0  # type: ignore[attr-defined]
    assert rig.executor.execute(rig.deliver()) is Outcome.SUCCEEDED
    assert rig.get(job.id).attempts == 2  # two real runs, no delivery counted on its own


# --- 3. no write by a worker that no longer holds the job -----------------------------------------


def test_fail_by_a_worker_that_does_not_hold_the_job_is_refused() -> None:
    taken_over = make_job().start("old", 30, now=0).start("new", 30, now=100)
    with pytest.raises(IllegalTransition):
        taken_over.fail(ErrorCode.TIMEOUT, "late", worker="old")
    assert taken_over.fail(ErrorCode.TIMEOUT, "mine", worker="new").state is JobState.FAILED


def test_a_zombie_worker_cannot_fail_a_job_another_worker_took_over() -> None:
    rig = Rig()
    job = rig.submit()
    original = rig.runtime.render

    def taken_over_then_timeout(task, on_step, timeout=None):  # type: ignore[no-untyped-def]
        current = rig.get(job.id)  # our lease ran out; another worker claimed the job
        rig.store.update(current.start("w2", 30, now=time.time() + 60), current.version)
        raise RenderTimeout("too slow")

    rig.runtime.render = taken_over_then_timeout  # type: ignore[method-assign]
    assert rig.executor.execute(rig.deliver()) is Outcome.SKIPPED
    rig.runtime.render = original  # type: ignore[method-assign]
    current = rig.get(job.id)
    assert current.state is JobState.RUNNING and current.lease.owner == "w2"  # type: ignore[union-attr]


def test_a_worker_whose_record_renewals_fail_past_its_lease_stops_and_writes_nothing() -> None:
    rig = Rig(lease_seconds=0.3)
    job = rig.submit(steps=20)
    rig.runtime.step_seconds = 0.05
    real_update = rig.store.update
    failing = threading.Event()

    def update(j: Job, expected_version: int) -> Job:
        if failing.is_set():
            raise Unavailable("store unreachable from this worker")
        return real_update(j, expected_version)

    rig.store.update = update  # type: ignore[method-assign]
    rig.during_render(lambda step: failing.set() if step == 1 else None)
    outcome = rig.executor.execute(rig.deliver())
    assert outcome is Outcome.SKIPPED  # the lease ran out: the job is not ours to end
    rig.store.update = real_update  # type: ignore[method-assign]
    current = rig.get(job.id)
    assert current.state is JobState.RUNNING and current.outputs == ()
    assert rig.blobs.blobs == {}


# --- 4. an out-of-memory move never half happens ---------------------------------------------------


def test_a_move_whose_dispatch_failed_is_re_routed_by_the_old_lanes_delivery() -> None:
    lanes = Lanes([Lane(name="fast", on_oom="big"), Lane(name="big", capacity="gpu")])
    rig = Rig(lanes=lanes)
    job = rig.submit()
    rig.runtime.fail_with = MemoryError()
    real_dispatch = rig.queue.dispatch
    rig.queue.dispatch = lambda j: (_ for _ in ()).throw(Unavailable("queue down"))  # type: ignore[method-assign]
    assert rig.executor.execute(rig.deliver()) is Outcome.MOVED
    rig.queue.dispatch = real_dispatch  # type: ignore[method-assign]
    assert rig.get(job.id).lane == "big"
    calls = len(rig.runtime.calls)
    # The old lane's delivery comes back: it is re-routed, not run on the small device.
    assert rig.executor.execute(rig.deliver("fast")) is Outcome.MOVED
    assert len(rig.runtime.calls) == calls
    assert rig.queue.backlog("fast") == 0 and rig.queue.backlog("big") == 1
    assert rig.get(job.id).state is JobState.QUEUED and rig.get(job.id).error is None


# --- 5. a cancelled or failed job keeps no files ----------------------------------------------------


def test_files_left_by_a_killed_attempt_are_removed_when_the_job_is_cancelled() -> None:
    rig = Rig()
    job = rig.submit(num_images=2)
    current = rig.get(job.id)
    claimed = rig.store.update(current.start("killed", lease_seconds=-1), current.version)  # kill -9 mid-upload
    rig.blobs.put(output_key(job.id, 0, attempt=claimed.attempts), b"half of the job", "image/png")
    rig.cancel(job.id)
    assert rig.executor.execute(rig.deliver()) is Outcome.CANCELLED
    assert rig.get(job.id).state is JobState.CANCELLED and rig.blobs.blobs == {}


def test_a_success_keeps_only_its_own_attempts_files() -> None:
    rig = Rig()
    job = rig.submit()
    current = rig.get(job.id)
    dead = rig.store.update(current.start("killed", lease_seconds=-1), current.version)
    rig.blobs.put(output_key(job.id, 0, attempt=dead.attempts), b"an earlier attempt's image", "image/png")
    assert rig.executor.execute(rig.deliver()) is Outcome.SUCCEEDED
    done = rig.get(job.id)
    assert set(rig.blobs.blobs) == {o.key for o in done.outputs} and done.attempts == 2


def test_a_late_upload_by_a_worker_that_lost_the_job_leaves_nothing_behind() -> None:
    rig = Rig()
    job = rig.submit(num_images=2)
    real_put = rig.blobs.put

    def slow_put(key: str, data: bytes, content_type: str) -> None:
        real_put(key, data, content_type)
        current = rig.get(job.id)  # the upload was so slow that the lease ran out and w2 took over
        if current.lease is not None and current.lease.owner == "w1":
            rig.store.update(current.start("w2", 30, now=time.time() + 60), current.version)

    rig.blobs.put = slow_put  # type: ignore[method-assign]
    assert rig.executor.execute(rig.deliver()) is Outcome.SKIPPED
    assert rig.blobs.blobs == {}  # w1 removed what it wrote; w2's attempt writes its own keys


# --- 8. a dispatch failure after the record was written is not a 503 ------------------------------


def test_submit_answers_with_the_job_when_dispatch_fails_after_the_create() -> None:
    from difflane.api.schemas import JobCreate
    from difflane.api.service import JobService
    from difflane.auth.caller import Caller

    store, queue = MemoryJobStore(), MemoryQueue()
    service = JobService(store, queue, catalog.builtin())
    queue.dispatch = lambda j: (_ for _ in ()).throw(Unavailable("queue down"))  # type: ignore[method-assign]
    job, created = service.submit(Caller(Principal("t", "alice")), JobCreate(model="tiny", prompt="a fox"))
    assert created and store.get(job.id) is not None


# --- 9. forming a batch never strands a claimed delivery --------------------------------------------


def test_a_failing_drain_while_forming_a_batch_keeps_the_deliveries_already_claimed() -> None:
    rig = Rig()
    for _ in range(2):
        rig.submit()

    def receive_ready(lanes, limit):  # type: ignore[no-untyped-def]
        raise Unavailable("receive failed")

    rig.queue.receive_ready = receive_ready  # type: ignore[method-assign]
    lane = Lane(name="fast", max_batch=8, max_wait_ms=200)
    batcher = Batcher(rig.queue, rig.store, lambda name: lane, ["fast"])
    batch = batcher.next_batch(1.0)
    assert len(batch) == 1  # the first one runs; the error only ended the forming


def test_a_failing_receive_while_waiting_for_company_keeps_the_batch_formed_so_far() -> None:
    rig = Rig()
    for _ in range(2):
        rig.submit()
    real_receive = rig.queue.receive
    calls = {"n": 0}

    def receive(lanes, timeout):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # the look found the first; the drain took the second; now the wait
            raise Unavailable("receive failed")
        return real_receive(lanes, timeout)

    rig.queue.receive = receive  # type: ignore[method-assign]
    lane = Lane(name="fast", max_batch=8, max_wait_ms=200)
    batcher = Batcher(rig.queue, rig.store, lambda name: lane, ["fast"])
    batch = batcher.next_batch(1.0)
    assert len(batch) == 2 and calls["n"] == 2  # both run; the error only ended the wait


def test_a_failing_record_read_while_forming_a_batch_gives_the_delivery_back() -> None:
    rig = Rig()
    first, second = rig.submit(), rig.submit()
    lane = Lane(name="fast", max_batch=8, max_wait_ms=200)
    batcher = Batcher(rig.queue, rig.store, lambda name: lane, ["fast"])
    real_get = rig.store.get

    def get(job_id: str) -> Job | None:
        if job_id == second.id:
            raise Unavailable("store hiccup")
        return real_get(job_id)

    rig.store.get = get  # type: ignore[method-assign]
    batch = batcher.next_batch(1.0)
    rig.store.get = real_get  # type: ignore[method-assign]
    assert [d.job_id for d in batch] == [first.id]
    again = rig.queue.receive(["fast"], timeout=2)  # given back (after its short delay), not stranded
    assert again is not None and again.job_id == second.id


# --- hostile input: one job's failure fails that job alone -------------------------------------------


def test_a_job_whose_image_cannot_be_written_fails_alone_in_its_batch() -> None:
    rig = Rig()
    good, bad = rig.submit(prompt="a fox"), rig.submit(prompt="a fox\x00")
    deliveries = [rig.deliver(), rig.deliver()]
    outcomes = rig.executor.execute_batch(deliveries)
    by_id = dict(zip([d.job_id for d in deliveries], outcomes, strict=True))
    assert by_id[good.id] is Outcome.SUCCEEDED and by_id[bad.id] is Outcome.FAILED
    assert rig.get(bad.id).error.code is ErrorCode.INVALID_INPUT  # type: ignore[union-attr]
    assert len(rig.get(good.id).outputs) == 1
