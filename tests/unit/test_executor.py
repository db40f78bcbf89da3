"""The executor's decisions, on the in-memory fakes: one delivery at a time, step by step."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from difflane import catalog
from difflane.errors import Unavailable
from difflane.jobs import ErrorCode, Job, JobState
from difflane.testing import FakeRuntime, MemoryBlobStore, MemoryJobStore, MemoryQueue
from difflane.worker.executor import Executor, Outcome, WorkerConfig
from difflane.worker.runtime import ModelUnavailable
from difflane.worker.shutdown import Shutdown
from tests.conftest import make_job


@dataclasses.dataclass
class Rig:
    store: MemoryJobStore
    blobs: MemoryBlobStore
    queue: MemoryQueue
    runtime: FakeRuntime
    executor: Executor
    shutdown: Shutdown

    def submit(self, **changes: object) -> Job:
        job, _ = self.store.create(make_job(**changes))
        self.queue.dispatch(job)
        return job

    def deliver(self):  # type: ignore[no-untyped-def]
        d = self.queue.receive(["fast"], timeout=1)
        assert d is not None
        return d

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        assert job is not None
        return job


@pytest.fixture
def rig() -> Rig:
    store, blobs, queue, runtime = MemoryJobStore(), MemoryBlobStore(), MemoryQueue(lease_seconds=5), FakeRuntime()
    config = WorkerConfig("w1", lease_seconds=5, max_attempts=3, retry_backoff_seconds=0.0)
    shutdown = Shutdown(grace_seconds=0.0)
    executor = Executor(store, blobs, catalog.builtin(), runtime, config, should_give_back=shutdown.past_grace)
    return Rig(store, blobs, queue, runtime, executor, shutdown)


def test_success_uploads_and_acks(rig: Rig) -> None:
    job = rig.submit(num_images=2)
    assert rig.executor.execute(rig.deliver()) is Outcome.SUCCEEDED
    done = rig.get(job.id)
    assert done.state is JobState.SUCCEEDED and len(done.outputs) == 2
    assert set(rig.blobs.blobs) == {o.key for o in done.outputs}
    assert rig.queue.backlog("fast") == 0 and rig.queue.receive(["fast"], 0.05) is None


def test_same_parameters_give_identical_png_bytes(rig: Rig) -> None:
    a, b = rig.submit(seed=5), rig.submit(seed=5)
    rig.executor.execute(rig.deliver())
    rig.executor.execute(rig.deliver())
    (oa,), (ob,) = rig.get(a.id).outputs, rig.get(b.id).outputs
    assert oa.sha256 == ob.sha256 and rig.blobs.blobs[oa.key][0] == rig.blobs.blobs[ob.key][0]


def test_redelivery_of_a_finished_job_does_no_work(rig: Rig) -> None:
    job = rig.submit()
    rig.executor.execute(rig.deliver())
    calls = len(rig.runtime.calls)
    rig.queue.dispatch(job)  # a duplicate message
    assert rig.executor.execute(rig.deliver()) is Outcome.SKIPPED
    assert len(rig.runtime.calls) == calls


def test_a_render_error_is_retried_then_fails_with_max_attempts(rig: Rig) -> None:
    job = rig.submit()
    for attempt in (1, 2):
        rig.runtime.fail_with = RuntimeError("kernel exploded")
        assert rig.executor.execute(rig.deliver()) is Outcome.REQUEUED
        assert rig.get(job.id).state is JobState.QUEUED and rig.get(job.id).attempts == attempt
    rig.runtime.fail_with = RuntimeError("kernel exploded")
    assert rig.executor.execute(rig.deliver()) is Outcome.FAILED
    final = rig.get(job.id)
    assert final.state is JobState.FAILED and final.error is not None
    assert final.error.code is ErrorCode.MAX_ATTEMPTS and "kernel exploded" in final.error.message
    assert rig.queue.dead_letters == {job.id: "max_attempts"}


def test_a_job_that_ran_max_attempts_times_fails_without_running(rig: Rig) -> None:
    job = rig.submit()
    for i in range(3):  # three workers claimed it and died (their leases expired)
        current = rig.get(job.id)
        rig.store.update(current.start(f"dead-{i}", lease_seconds=-1), current.version)
    calls = len(rig.runtime.calls)
    assert rig.executor.execute(rig.deliver()) is Outcome.FAILED
    assert rig.get(job.id).error.code is ErrorCode.MAX_ATTEMPTS  # type: ignore[union-attr]
    assert len(rig.runtime.calls) == calls


def test_deliveries_that_never_ran_spend_no_attempts(rig: Rig) -> None:
    # Lost locks, redeliveries, give-backs of the queue message: none of them ran the job.
    job = rig.submit()
    for _ in range(5):
        rig.deliver().retry(0)
    assert rig.executor.execute(rig.deliver()) is Outcome.SUCCEEDED
    assert rig.get(job.id).attempts == 1


def test_a_worker_killed_mid_job_is_taken_over_once_its_lease_expires(rig: Rig) -> None:
    job = rig.submit()
    rig.store.update(rig.get(job.id).start("dead-worker", lease_seconds=-1), 1)  # it died; lease is past
    assert rig.executor.execute(rig.deliver()) is Outcome.SUCCEEDED
    done = rig.get(job.id)
    assert done.attempts == 2 and len(done.outputs) == 1


def test_a_duplicate_delivery_while_another_worker_holds_the_job_is_put_back(rig: Rig) -> None:
    job = rig.submit()
    rig.store.update(rig.get(job.id).start("other", lease_seconds=60), 1)
    assert rig.executor.execute(rig.deliver()) is Outcome.DEFERRED
    assert rig.runtime.calls == [] and rig.get(job.id).lease.owner == "other"  # type: ignore[union-attr]


def test_cancel_during_render_stops_within_a_step(rig: Rig) -> None:
    job = rig.submit(steps=50)
    original = rig.runtime.render

    def render_and_cancel(task, on_step, timeout=None):  # type: ignore[no-untyped-def]
        def step(i: int, total: int) -> bool:
            if i == 3:
                rig.store.update(rig.get(job.id).cancel(), rig.get(job.id).version)
            return on_step(i, total)

        return original(task, step, timeout)

    rig.runtime.render = render_and_cancel  # type: ignore[method-assign]
    assert rig.executor.execute(rig.deliver()) is Outcome.CANCELLED
    final = rig.get(job.id)
    assert final.state is JobState.CANCELLED and final.outputs == () and final.progress.step <= 4
    assert rig.blobs.blobs == {}


def test_missing_model_fails_with_model_unavailable(rig: Rig) -> None:
    job = rig.submit()
    rig.runtime.fail_with = ModelUnavailable("weights not in cache")
    assert rig.executor.execute(rig.deliver()) is Outcome.FAILED
    assert rig.get(job.id).error.code is ErrorCode.MODEL_UNAVAILABLE  # type: ignore[union-attr]


def test_out_of_memory_fails_with_oom(rig: Rig) -> None:
    job = rig.submit()
    rig.runtime.fail_with = MemoryError()
    assert rig.executor.execute(rig.deliver()) is Outcome.FAILED
    assert rig.get(job.id).error.code is ErrorCode.OOM  # type: ignore[union-attr]


def test_shutdown_past_grace_gives_the_job_back(rig: Rig) -> None:
    job = rig.submit(steps=10)
    rig.shutdown.request()  # no grace: the batch in hand goes back at its next step
    assert rig.executor.execute(rig.deliver()) is Outcome.REQUEUED
    back = rig.get(job.id)
    assert back.state is JobState.QUEUED and back.lease is None
    assert rig.queue.backlog("fast") == 1


def test_unknown_job_is_dropped(rig: Rig) -> None:
    rig.queue.dispatch(make_job())  # never written to the store
    assert rig.executor.execute(rig.deliver()) is Outcome.SKIPPED
    assert rig.queue.backlog("fast") == 0


# --- batches -----------------------------------------------------------------------------------


def batch(rig: Rig, count: int, **changes: object) -> list[Job]:
    jobs = [rig.submit(seed=i, **changes) for i in range(count)]
    return jobs


def deliver_all(rig: Rig, count: int):  # type: ignore[no-untyped-def]
    return [rig.deliver() for _ in range(count)]


def test_a_batch_is_one_pipeline_call_and_each_job_gets_its_images(rig: Rig) -> None:
    jobs = batch(rig, 3, num_images=2)
    outcomes = rig.executor.execute_batch(deliver_all(rig, 3))
    assert outcomes == [Outcome.SUCCEEDED] * 3
    assert len(rig.runtime.calls) == 1 and len(rig.runtime.calls[0].seeds) == 6
    for job in jobs:
        done = rig.get(job.id)
        assert [o.seed for o in done.outputs] == list(job.request.seeds())
        assert done.metrics is not None and done.metrics.batch_size == 6


def test_batched_images_equal_the_same_jobs_run_alone(rig: Rig) -> None:
    together = batch(rig, 3)
    rig.executor.execute_batch(deliver_all(rig, 3))
    alone = batch(rig, 3)
    for _ in alone:
        rig.executor.execute(rig.deliver())
    for a, b in zip(together, alone, strict=True):
        assert rig.get(a.id).outputs[0].sha256 == rig.get(b.id).outputs[0].sha256


def test_cancelling_one_job_of_a_batch_drops_only_its_outputs(rig: Rig) -> None:
    jobs = batch(rig, 3, steps=20)
    victim = jobs[1]
    original = rig.runtime.render

    def render(task, on_step, timeout=None):  # type: ignore[no-untyped-def]
        def step(i: int, total: int) -> bool:
            if i == 3:
                current = rig.get(victim.id)
                rig.store.update(current.cancel(), current.version)
            return on_step(i, total)

        return original(task, step, timeout)

    rig.runtime.render = render  # type: ignore[method-assign]
    outcomes = rig.executor.execute_batch(deliver_all(rig, 3))
    assert outcomes == [Outcome.SUCCEEDED, Outcome.CANCELLED, Outcome.SUCCEEDED]
    assert rig.get(victim.id).state is JobState.CANCELLED and rig.get(victim.id).outputs == ()
    assert all(not key.startswith(f"outputs/{victim.id}/") for key in rig.blobs.blobs)
    assert len(rig.blobs.blobs) == 2


def test_a_timeout_fails_every_job_of_the_batch(rig: Rig) -> None:
    from difflane.worker.runtime import RenderTimeout

    jobs = batch(rig, 2)
    rig.runtime.fail_with = RenderTimeout("took too long")
    assert rig.executor.execute_batch(deliver_all(rig, 2)) == [Outcome.FAILED] * 2
    assert all(rig.get(j.id).error.code is ErrorCode.TIMEOUT for j in jobs)  # type: ignore[union-attr]
    assert rig.queue.backlog("fast") == 0


def test_out_of_memory_moves_jobs_to_the_on_oom_lane(rig: Rig) -> None:
    from difflane.lanes import Lane, Lanes

    rig.executor.lanes = Lanes([Lane(name="fast", on_oom="big"), Lane(name="big", capacity="gpu")])
    rig.executor.dispatcher = rig.queue
    job = rig.submit()
    rig.runtime.fail_with = MemoryError()
    assert rig.executor.execute(rig.deliver()) is Outcome.MOVED
    moved = rig.get(job.id)
    assert moved.state is JobState.QUEUED and moved.lane == "big" and moved.error is None
    assert rig.queue.backlog("fast") == 0 and rig.queue.backlog("big") == 1


def test_records_carry_run_metrics(rig: Rig) -> None:
    job = rig.submit()
    rig.executor.execute(rig.deliver())
    m = rig.get(job.id).metrics
    assert m is not None and m.batch_size == 1 and m.device == "cpu"
    assert m.queue_wait_s is not None and m.queue_wait_s >= 0 and m.execution_s is not None


def test_duplicates_while_another_worker_holds_the_job_do_not_use_up_attempts(rig: Rig) -> None:
    job = rig.submit()
    rig.store.update(rig.get(job.id).start("other", lease_seconds=60), 1)
    for _ in range(5):  # more deliveries than max_attempts, all while "other" is alive
        d = rig.deliver()
        assert rig.executor.execute(d) is Outcome.DEFERRED
        rig.queue._entries[job.id].available_at = 0  # type: ignore[attr-defined]  # skip the wait
    assert rig.get(job.id).state is JobState.RUNNING and rig.get(job.id).error is None


def test_the_jobs_of_a_batch_store_their_images_side_by_side(rig: Rig) -> None:
    # Encoding and uploading release the GIL: a batch's jobs are stored at once, not in a row
    # while the accelerator waits. Each put waits until the others have started (the barrier's
    # timeout only guards against a hang: one job after the other would break it).
    barrier = threading.Barrier(3, timeout=10)
    put = rig.blobs.put

    def meeting(key: str, data: bytes, content_type: str) -> None:
        barrier.wait()
        put(key, data, content_type)

    rig.blobs.put = meeting  # type: ignore[method-assign]
    jobs = batch(rig, 3)
    assert rig.executor.execute_batch(deliver_all(rig, 3)) == [Outcome.SUCCEEDED] * 3
    assert all(len(rig.get(job.id).outputs) == 1 for job in jobs)


def test_a_failed_upload_in_a_batch_touches_only_its_job(rig: Rig) -> None:
    put = rig.blobs.put
    jobs = batch(rig, 3)

    def failing_for_the_second(key: str, data: bytes, content_type: str) -> None:
        if jobs[1].id in key:
            raise Unavailable("result store unavailable (test)")
        put(key, data, content_type)

    rig.blobs.put = failing_for_the_second  # type: ignore[method-assign]
    outcomes = rig.executor.execute_batch(deliver_all(rig, 3))
    assert outcomes == [Outcome.SUCCEEDED, Outcome.REQUEUED, Outcome.SUCCEEDED]
    assert rig.get(jobs[1].id).state is JobState.QUEUED and not any(jobs[1].id in k for k in rig.blobs.blobs)


def test_the_first_job_of_a_batch_settles_while_the_others_upload(rig: Rig) -> None:
    jobs = batch(rig, 2)
    first_done = threading.Event()
    update, put = rig.store.update, rig.blobs.put

    def noting(job: Job, expected_version: int) -> Job:
        stored = update(job, expected_version)
        if job.id == jobs[0].id and job.state is JobState.SUCCEEDED:
            first_done.set()
        return stored

    def after_the_first(key: str, data: bytes, content_type: str) -> None:
        # The timeout only guards against a hang: settling after every upload would run into it.
        if jobs[1].id in key and not first_done.wait(10):
            raise Unavailable("the first job was not settled while this one uploaded")
        put(key, data, content_type)

    rig.store.update = noting  # type: ignore[method-assign]
    rig.blobs.put = after_the_first  # type: ignore[method-assign]
    assert rig.executor.execute_batch(deliver_all(rig, 2)) == [Outcome.SUCCEEDED] * 2
