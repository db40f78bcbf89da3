"""Graceful give-backs on Service Bus spend no attempts (issue 9, "examine and decide").

A rolling restart or a scale-in stops a worker past its grace period in the middle of a job,
again and again. Each give-back must leave the job as it was: not one step closer to
``max_attempts``, not one delivery closer to the queue's ``MaxDeliveryCount``.
"""

from __future__ import annotations

from difflane import catalog
from difflane.jobs import JobState
from difflane.testing import FakeRuntime, MemoryBlobStore, MemoryJobStore
from difflane.worker.executor import Executor, Outcome, WorkerConfig
from tests.conftest import make_job
from tests.fakes.servicebus import FakeServiceBusNamespace, FakeServiceBusQueue

Q = "difflane-fast"


def test_more_give_backs_than_max_attempts_and_the_job_still_runs() -> None:
    ns = FakeServiceBusNamespace(lock_duration=30, max_delivery_count=3)
    queue = FakeServiceBusQueue(["fast"], namespace=ns, running=lambda lane: 0)
    store, blobs = MemoryJobStore(), MemoryBlobStore()
    job, _ = store.create(make_job(steps=3))
    queue.dispatch(job)
    stopping = {"now": True}
    executor = Executor(
        store,
        blobs,
        catalog.builtin(),
        FakeRuntime(),
        WorkerConfig("w1", lease_seconds=30, max_attempts=3),
        should_give_back=lambda: stopping["now"],
    )
    for _ in range(5):  # five restarts, each past the grace period mid-job
        delivery = queue.receive(["fast"], 1.0)
        assert delivery is not None and delivery.job_id == job.id
        assert executor.execute(delivery) is Outcome.REQUEUED
    stopping["now"] = False
    delivery = queue.receive(["fast"], 1.0)
    assert delivery is not None
    assert executor.execute(delivery) is Outcome.SUCCEEDED
    done = store.get(job.id)
    assert done is not None and done.state is JobState.SUCCEEDED and len(done.outputs) == 1
    assert ns.dead_letters(Q) == [] and "abandon" not in [what for _, what in ns.settlements]
    queue.close()
