"""Two Service Bus messages for one job, met by one worker (issue 9, "examine and decide").

Two messages for one job are normal on Service Bus: a settlement lost after a delayed retry's
copy was scheduled, the sweeper re-sending after the duplicate-detection window, a give-back's
copy whose original's completion was lost. Both can land in one batch, since they have the same
batch key. The job must run once: one render, one attempt on the record, one set of outputs.
"""

from __future__ import annotations

from azure.servicebus import ServiceBusMessage

from difflane import catalog
from difflane.dispatch import servicebus
from difflane.jobs import Job, JobState
from difflane.lanes import Lane
from difflane.testing import FakeRuntime, MemoryBlobStore, MemoryJobStore
from difflane.worker.batching import Batcher
from difflane.worker.executor import Executor, Outcome, WorkerConfig
from tests.conftest import make_job
from tests.fakes.servicebus import FakeServiceBusQueue

LANE = Lane(name="fast", max_batch=4, max_wait_ms=200)


def _second_message(queue: FakeServiceBusQueue, job: Job) -> None:
    """A second message for the job with another id (duplicate detection does not drop it)."""
    body = servicebus.encode(job.id, job.lane, {})
    sender = queue.namespace.client().get_queue_sender("difflane-fast")
    sender.send_messages(ServiceBusMessage(body, message_id=f"{job.id}/r9", content_type="application/json"))


def test_two_messages_for_one_job_in_one_batch_both_reach_the_batch() -> None:
    store, queue = MemoryJobStore(), FakeServiceBusQueue(["fast"], running=lambda lane: 0)
    job, _ = store.create(make_job())
    queue.dispatch(job)
    _second_message(queue, job)
    batch = Batcher(queue.source, store, lambda name: LANE, ["fast"], lease_seconds=30).next_batch(2)
    # The adapter delivers each message as it is: it cannot tell a stale copy from the live one
    # (the live one may be the copy), so the duplicate reaches the executor.
    assert [d.job_id for d in batch] == [job.id, job.id]
    queue.close()


def test_two_messages_for_one_job_in_one_batch_run_it_once() -> None:
    store, blobs, runtime = MemoryJobStore(), MemoryBlobStore(), FakeRuntime()
    queue = FakeServiceBusQueue(["fast"], running=lambda lane: 0)
    job, _ = store.create(make_job())
    queue.dispatch(job)
    _second_message(queue, job)
    batch = Batcher(queue.source, store, lambda name: LANE, ["fast"], lease_seconds=30).next_batch(2)
    assert len(batch) == 2
    executor = Executor(store, blobs, catalog.builtin(), runtime, WorkerConfig("w1", lease_seconds=30))
    outcomes = executor.execute_batch(batch)
    done = store.get(job.id)
    assert done is not None and done.state is JobState.SUCCEEDED
    assert Outcome.SUCCEEDED in outcomes and outcomes.count(Outcome.SUCCEEDED) == 1
    assert sum(len(task.prompts) for task in runtime.calls) == 1  # rendered once
    assert done.attempts == 1 and len(done.outputs) == 1
    queue.close()
