"""Workers on Service Bus (the SDK-shaped fake) with job records in Blob Storage (Azurite).

The fault cases of issue 5, each run through the real executor: a worker killed mid-job, a
settlement lost after the result was written, a poison job, a cancel racing completion, Blob
faults under a running job. The record decides every time: one result, never a second render.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from difflane import catalog as catalog_mod
from difflane.dispatch.servicebus import ServiceBusDispatcher, ServiceBusWorkSource, queue_names
from difflane.errors import IllegalTransition
from difflane.jobs import ErrorCode, Job, JobState
from difflane.store.base import mutate
from difflane.testing import FakeRuntime
from difflane.worker.executor import Executor, Outcome, WorkerConfig
from difflane.worker.runtime import RenderedImage, RenderTask, StepCallback
from tests import azurite
from tests.conftest import make_job
from tests.fakes.servicebus import FakeAutoLockRenewer, FakeServiceBusNamespace
from tests.integration.fault_proxy import Fault, FaultProxy, once_each

pytestmark = pytest.mark.integration

LOCK_S = 0.5  # the fake queue's lock; the executor's lease is the same
NAMES = queue_names("difflane-")
Q = NAMES("fast")


class GatedRuntime(FakeRuntime):
    """Stops at ``at_step`` until released: a worker in the middle of a job."""

    def __init__(self, at_step: int) -> None:
        super().__init__()
        self.at_step = at_step
        self.reached = threading.Event()
        self.release = threading.Event()

    def render(self, task: RenderTask, on_step: StepCallback, timeout: float | None = None) -> list[RenderedImage]:
        def gated(step: int, total: int) -> bool:
            if step == self.at_step:
                self.reached.set()
                self.release.wait(30)
            return on_step(step, total)

        return super().render(task, gated, timeout)


class BrokenRuntime(FakeRuntime):
    """Fails every render, like a job that crashes its pipeline each time."""

    def render(self, task: RenderTask, on_step: StepCallback, timeout: float | None = None) -> list[RenderedImage]:
        self.calls.append(task)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


class Rig:
    def __init__(self, io: Any = None) -> None:
        self.io = io or azurite.blob_io()
        self.store = azurite.job_store(self.io)
        self.blobs = azurite.blob_store(self.io)
        self.ns = FakeServiceBusNamespace(lock_duration=LOCK_S)
        self.ns.create_queue(Q)
        self.dispatcher = ServiceBusDispatcher(
            self.ns.client(), NAMES, admin=self.ns.admin(), running=self.store.running
        )
        self.catalog = catalog_mod.load(None)

    def submit(self, **changes: object) -> Job:
        job, _ = self.store.create(make_job(**changes))
        self.dispatcher.dispatch(job)
        return job

    def source(self) -> ServiceBusWorkSource:
        return ServiceBusWorkSource(self.ns.client(), NAMES, FakeAutoLockRenewer(self.ns), max_lock_renewal_s=60)

    def executor(self, runtime: FakeRuntime, worker: str, *, every_step: bool = False) -> Executor:
        config = WorkerConfig(
            worker,
            lease_seconds=LOCK_S,
            max_attempts=3,
            retry_backoff_seconds=0.05,
            progress_interval_s=0.0 if every_step else None,  # None: the store's (one write a second)
        )
        return Executor(self.store, self.blobs, self.catalog, runtime, config)

    def work_until(self, job_id: str, source: ServiceBusWorkSource, executor: Executor, *, limit_s: float = 30) -> Job:
        """Receive and execute until the record is terminal (a wait with a bound, not a timing test)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            job = self.store.get(job_id)
            if job is not None and job.state.terminal:
                return job
            delivery = source.receive(["fast"], 0.5)
            if delivery is not None:
                executor.execute(delivery)
        pytest.fail(f"job {job_id} not finished within {limit_s} s")


def _single_output(rig: Rig, job: Job) -> None:
    assert len(job.outputs) == job.request.num_images == 1
    data = b"".join(rig.blobs.open(job.outputs[0].key))
    assert len(data) == job.outputs[0].bytes


def test_a_worker_killed_mid_job_loses_its_lock_and_the_job_finishes_once() -> None:
    rig = Rig()
    job = rig.submit()
    source_a, runtime_a = rig.source(), GatedRuntime(at_step=2)
    delivery_a = source_a.receive(["fast"], 1)
    assert delivery_a is not None
    outcome_a: list[Outcome] = []
    worker_a = threading.Thread(target=lambda: outcome_a.append(rig.executor(runtime_a, "A").execute(delivery_a)))
    worker_a.start()
    assert runtime_a.reached.wait(10)
    assert rig.store.running("fast") == 1 and rig.dispatcher.backlog("fast") == 0
    source_a.close()  # worker A "dies": its lock renewer and its link are gone, its thread hangs

    runtime_b = FakeRuntime()
    source_b = rig.source()
    done = rig.work_until(job.id, source_b, rig.executor(runtime_b, "B"))
    assert done.state is JobState.SUCCEEDED and done.lease is None
    assert len(runtime_b.calls) == 1
    _single_output(rig, done)

    runtime_a.release.set()  # A wakes up: it lost its lease and must write nothing
    worker_a.join(10)
    assert outcome_a == [Outcome.SKIPPED]
    assert rig.store.get(job.id) == done
    assert rig.ns.messages(Q) == [] and rig.ns.dead_letters(Q) == []
    source_b.close()


def test_a_settlement_lost_after_the_result_never_renders_twice() -> None:
    rig = Rig()
    job = rig.submit()
    runtime = FakeRuntime()
    source = rig.source()
    executor = rig.executor(runtime, "A")
    delivery = source.receive(["fast"], 1)
    assert delivery is not None
    rig.ns.lose_settlements(1)  # the complete after "succeeded" never reaches the service
    assert executor.execute(delivery) is Outcome.SUCCEEDED
    assert rig.ns.messages(Q) == [job.id]  # still there: it will come back

    again = source.receive(["fast"], 5)  # after the lock runs out
    assert again is not None and again.job_id == job.id and again.attempt == 2
    assert executor.execute(again) is Outcome.SKIPPED  # the record says succeeded: completed, no work
    assert len(runtime.calls) == 1
    assert rig.ns.messages(Q) == []
    source.close()


def test_a_poison_job_is_dead_lettered_and_fails_with_the_reason() -> None:
    rig = Rig()
    job = rig.submit()
    runtime = BrokenRuntime()
    source = rig.source()
    done = rig.work_until(job.id, source, rig.executor(runtime, "A"))
    assert done.state is JobState.FAILED
    assert done.error is not None and done.error.code is ErrorCode.MAX_ATTEMPTS
    assert "illegal memory access" in done.error.message
    assert len(runtime.calls) == 3  # max_attempts renders, no more
    [(message_id, reason, _)] = rig.ns.dead_letters(Q)
    assert reason == "max_attempts" and message_id.startswith(job.id)
    assert rig.ns.messages(Q) == []
    source.close()


def test_cancel_before_the_last_step_wins_and_keeps_no_outputs() -> None:
    rig = Rig()
    job = rig.submit(steps=4)
    runtime = GatedRuntime(at_step=4)
    source = rig.source()
    delivery = source.receive(["fast"], 1)
    assert delivery is not None
    outcome: list[Outcome] = []
    worker = threading.Thread(target=lambda: outcome.append(rig.executor(runtime, "A").execute(delivery)))
    worker.start()
    assert runtime.reached.wait(10)
    mutate(rig.store, job.id, lambda j: j.cancel())  # the API's cancel, while the worker is on its last step
    runtime.release.set()
    worker.join(10)
    final = rig.store.get(job.id)
    assert outcome == [Outcome.CANCELLED] and final is not None and final.state is JobState.CANCELLED
    assert final.outputs == () and list(rig.io.list(f"outputs/{job.id}/")) == []
    assert rig.ns.messages(Q) == []
    source.close()


def test_cancel_after_completion_loses_and_rereads() -> None:
    rig = Rig()
    job = rig.submit()
    source = rig.source()
    done = rig.work_until(job.id, source, rig.executor(FakeRuntime(), "A"))
    with pytest.raises(IllegalTransition):
        mutate(rig.store, job.id, lambda j: j.cancel())
    assert rig.store.get(job.id) == done
    source.close()


def test_cancel_racing_completion_has_one_winner() -> None:
    rig = Rig()
    for _ in range(3):
        job = rig.submit(steps=2)
        runtime = GatedRuntime(at_step=2)
        source = rig.source()
        delivery = source.receive(["fast"], 1)
        assert delivery is not None
        results: dict[str, object] = {}
        barrier = threading.Barrier(2)

        def work(d: Any = delivery, r: GatedRuntime = runtime, out: dict[str, object] = results) -> None:
            out["worker"] = rig.executor(r, "A").execute(d)

        def cancel(job_id: str = job.id, b: threading.Barrier = barrier, out: dict[str, object] = results) -> None:
            b.wait()
            try:
                out["cancel"] = mutate(rig.store, job_id, lambda j: j.cancel()).state
            except IllegalTransition:
                out["cancel"] = "lost"

        threads = [threading.Thread(target=work), threading.Thread(target=cancel)]
        for t in threads:
            t.start()
        runtime.reached.wait(10)
        barrier.wait()
        runtime.release.set()
        for t in threads:
            t.join(10)
        final = rig.store.get(job.id)
        assert final is not None
        if final.state is JobState.SUCCEEDED:
            assert results["cancel"] == "lost" and results["worker"] is Outcome.SUCCEEDED and len(final.outputs) == 1
        else:
            assert final.state is JobState.CANCELLED and results["worker"] is Outcome.CANCELLED
            assert final.outputs == () and list(rig.io.list(f"outputs/{job.id}/")) == []
        assert rig.ns.messages(Q) == []
        source.close()


def _writes_fail_once(method: str, path: str) -> Fault:
    return ("after", 503) if method == "PUT" else ("before", 429) if method == "GET" else None


def test_a_job_runs_once_through_blob_faults() -> None:
    settings = azurite.settings(azure_retries=6)
    direct = azurite.blob_io(settings)
    plan: Callable[[str, str, bytes], Fault] = once_each(_writes_fail_once)
    with FaultProxy(azurite.endpoint(), plan) as proxy:
        rig = Rig(azurite.blob_io(settings, endpoint_url=proxy.endpoint))
        job = rig.submit(steps=3)
        runtime = FakeRuntime()
        source = rig.source()
        done = rig.work_until(job.id, source, rig.executor(runtime, "A", every_step=True))
        source.close()
    assert proxy.faults["after 503"] > 5
    assert done.state is JobState.SUCCEEDED and done.attempts == 1 and len(runtime.calls) == 1
    history = azurite.job_store(direct).history(job.id)
    assert [v.version for v in history] == list(range(1, done.version + 1))
    steps = [v.progress.step for v in history if v.state is JobState.RUNNING]
    # In order, each step once (lease renewals in between repeat the step they were written at).
    assert [s for i, s in enumerate(steps) if i == 0 or steps[i - 1] != s] == [0, 1, 2, 3]
