"""How many times the executor reads and writes a job's record: each is a billed call on Azure.

The worker writes over the version it holds (a lost race costs the read, never a wrong write),
and writes progress at most once per ``progress_interval_s`` (the store's hint by default), beside
the render rather than between two of its steps.
"""

from __future__ import annotations

import threading

from difflane import catalog
from difflane.jobs import Job, JobState
from difflane.store.base import mutate
from difflane.testing import FakeRuntime, MemoryBlobStore, MemoryJobStore, MemoryQueue
from difflane.worker.executor import Executor, Outcome, WorkerConfig
from difflane.worker.runtime import RenderedImage, RenderTask, StepCallback
from tests.conftest import make_job


class CountingStore(MemoryJobStore):
    def __init__(self, progress_interval_s: float | None = None) -> None:
        super().__init__()
        if progress_interval_s is not None:
            self.progress_interval_s = progress_interval_s  # what a remote store asks for
        self.reads = 0
        self.writes = 0

    def get(self, job_id: str) -> Job | None:
        self.reads += 1
        return super().get(job_id)

    def update(self, job: Job, expected_version: int) -> Job:
        self.writes += 1
        return super().update(job, expected_version)


def _run(store: CountingStore, runtime: FakeRuntime, **config: float) -> tuple[Job, Outcome]:
    queue = MemoryQueue(lease_seconds=30)
    job, _ = store.create(make_job(steps=5))
    queue.dispatch(job)
    delivery = queue.receive(["fast"], timeout=1)
    assert delivery is not None
    executor = Executor(store, MemoryBlobStore(), catalog.builtin(), runtime, WorkerConfig("w1", **config))
    store.reads = store.writes = 0
    outcome = executor.execute(delivery)
    final = MemoryJobStore.get(store, job.id)
    assert final is not None
    return final, outcome


def test_a_job_reads_its_record_once_however_many_steps_it_writes() -> None:
    store = CountingStore()
    done, outcome = _run(store, FakeRuntime())
    assert outcome is Outcome.SUCCEEDED
    assert store.reads == 1  # the admission's; the claim, 5 steps and the final state write over it
    assert store.writes == 1 + 5 + 1 and done.version == 1 + store.writes


def test_progress_follows_the_stores_interval() -> None:
    store = CountingStore(progress_interval_s=3600.0)
    done, outcome = _run(store, FakeRuntime())
    assert outcome is Outcome.SUCCEEDED and done.progress.step == 5  # the final state says so
    assert store.writes == 2  # the claim and the final state: no step within the interval


def test_the_workers_setting_wins_over_the_stores() -> None:
    store = CountingStore(progress_interval_s=3600.0)
    _run(store, FakeRuntime(), progress_interval_s=0.0)
    assert store.writes == 1 + 5 + 1


class CancelledAt(FakeRuntime):
    """The API's cancel lands while the worker is at ``step``; records what each step was answered."""

    def __init__(self, store: MemoryJobStore, step: int) -> None:
        super().__init__()
        self.store, self.step = store, step
        self.answers: list[tuple[int, bool]] = []

    def render(self, task: RenderTask, on_step: StepCallback, timeout: float | None = None) -> list[RenderedImage]:
        def cancelling(step: int, total: int) -> bool:
            if step == self.step:
                [job] = MemoryJobStore.list_by_owner(self.store, make_job().owner, state=JobState.RUNNING)
                mutate(self.store, job.id, lambda j: j.cancel())
            answer = on_step(step, total)
            self.answers.append((step, answer))
            return answer

        return super().render(task, cancelling, timeout)


def test_a_cancel_between_throttled_writes_still_wins() -> None:
    store = CountingStore(progress_interval_s=3600.0)
    done, outcome = _run(store, CancelledAt(store, 2))
    assert outcome is Outcome.CANCELLED and done.state is JobState.CANCELLED and done.outputs == ()


def test_a_cancel_stops_the_render_at_most_one_step_after_the_step_it_landed_in() -> None:
    store = CountingStore()
    runtime = CancelledAt(store, 2)
    done, outcome = _run(store, runtime)
    assert outcome is Outcome.CANCELLED and done.state is JobState.CANCELLED
    # Step 2's write (beside step 3) meets the cancel at the latest; step 3's answer stops.
    assert runtime.answers[-1][1] is False and runtime.answers[-1][0] <= 3
    assert done.progress.step <= 2


class GatedStore(CountingStore):
    """Progress writes wait for the test's gate (the gate's timeout only guards against a hang)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.order: list[str] = []

    def update(self, job: Job, expected_version: int) -> Job:
        if job.state is JobState.RUNNING and job.progress.step > 0:
            self.gate.wait(5)
            self.order.append(f"written {job.progress.step}")
        return super().update(job, expected_version)


class Answered(FakeRuntime):
    def __init__(self, store: GatedStore) -> None:
        super().__init__()
        self.store = store

    def render(self, task: RenderTask, on_step: StepCallback, timeout: float | None = None) -> list[RenderedImage]:
        def step(i: int, total: int) -> bool:
            answer = on_step(i, total)
            self.store.order.append(f"answered {i}")
            self.store.gate.set()  # from now on writes go through
            return answer

        return super().render(task, step, timeout)


def test_a_step_is_answered_before_its_progress_write_is_done() -> None:
    # The model waits for every step's answer: a store write must not sit between two steps.
    store = GatedStore()
    done, outcome = _run(store, Answered(store))
    assert outcome is Outcome.SUCCEEDED and done.progress.step == 5
    assert store.order.index("answered 1") < store.order.index("written 1")
    assert [e for e in store.order if e.startswith("written")] == [f"written {i}" for i in range(1, 6)]


def test_batches_share_one_bookkeeping_thread() -> None:
    # Starting a thread per batch cost ~0.7 ms before a lone job's first step.
    store = CountingStore()
    threads: set[int] = set()
    original = store.update

    def update(job: Job, expected_version: int) -> Job:
        if job.progress.step > 0 and job.state is JobState.RUNNING:
            threads.add(threading.get_ident())
        return original(job, expected_version)

    store.update = update  # type: ignore[method-assign]
    queue = MemoryQueue(lease_seconds=30)
    executor = Executor(store, MemoryBlobStore(), catalog.builtin(), FakeRuntime(), WorkerConfig("w1"))
    for _ in range(3):
        job, _ = store.create(make_job(steps=3))
        queue.dispatch(job)
        delivery = queue.receive(["fast"], timeout=1)
        assert delivery is not None and executor.execute(delivery) is Outcome.SUCCEEDED
    assert len(threads) == 1 and threading.get_ident() not in threads
