"""How many times the executor reads and writes a job's record: each is a billed call on Azure.

The worker writes over the version it holds (a lost race costs the read, never a wrong write),
and writes progress at most once per ``progress_interval_s`` (the store's hint by default).
"""

from __future__ import annotations

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
    """The API's cancel lands while the worker is at ``step``."""

    def __init__(self, store: MemoryJobStore, step: int) -> None:
        super().__init__()
        self.store, self.step = store, step

    def render(self, task: RenderTask, on_step: StepCallback, timeout: float | None = None) -> list[RenderedImage]:
        def cancelling(step: int, total: int) -> bool:
            if step == self.step:
                [job] = MemoryJobStore.list_by_owner(self.store, make_job().owner, state=JobState.RUNNING)
                mutate(self.store, job.id, lambda j: j.cancel())
            return on_step(step, total)

        return super().render(task, cancelling, timeout)


def test_a_cancel_between_throttled_writes_still_wins() -> None:
    store = CountingStore(progress_interval_s=3600.0)
    done, outcome = _run(store, CancelledAt(store, 2))
    assert outcome is Outcome.CANCELLED and done.state is JobState.CANCELLED and done.outputs == ()


def test_a_cancel_is_seen_at_the_next_step_without_throttling() -> None:
    store = CountingStore()
    runtime = CancelledAt(store, 2)
    done, outcome = _run(store, runtime)
    assert outcome is Outcome.CANCELLED and done.state is JobState.CANCELLED
    assert done.progress.step == 2  # stopped at the step that met the cancel (its write lost the race)
