"""``build_worker``: one assembly, whose loop and executor share the shutdown from construction."""

from __future__ import annotations

import threading

import pytest

from difflane import wiring
from difflane.jobs import JobState
from difflane.settings import Settings
from difflane.testing import FakeRuntime
from difflane.worker.assembly import build_executor, build_worker, worker_config
from difflane.worker.executor import Outcome, WorkerConfig
from difflane.worker.shutdown import Shutdown
from tests.conftest import make_job


def parts() -> wiring.Components:
    return wiring.build(Settings(store="memory", dispatch="memory"))


def test_the_executor_gives_back_once_the_loops_grace_is_over() -> None:
    worker = build_worker(parts(), FakeRuntime(), ["fast"], WorkerConfig("w1"), grace_seconds=0.0)
    assert worker.executor.should_give_back() is False
    worker.request_stop()
    assert worker.shutdown.requested and worker.executor.should_give_back() is True


def test_a_stop_during_a_render_gives_the_job_back_not_an_attempt() -> None:
    p = parts()
    runtime = FakeRuntime(step_seconds=0.05)
    worker = build_worker(p, runtime, ["fast"], WorkerConfig("w1", lease_seconds=5), grace_seconds=0.0)
    job, _ = p.store.create(make_job(steps=200))
    p.dispatcher.dispatch(job)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    while (current := p.store.get(job.id)) is not None and current.state is not JobState.RUNNING:
        thread.join(0.01)
    worker.request_stop()
    thread.join(10)
    back = p.store.get(job.id)
    assert back is not None and back.state is JobState.QUEUED and back.attempts == 0
    assert worker.processed[Outcome.REQUEUED] == 1


def test_a_second_stop_request_keeps_the_first_deadline() -> None:
    now = [100.0]
    shutdown = Shutdown(5.0, clock=lambda: now[0])
    assert shutdown.request() is True
    now[0] = 104.0
    assert shutdown.request() is False and not shutdown.past_grace()
    now[0] = 105.0
    assert shutdown.past_grace()


def test_run_job_executor_cannot_move_lanes() -> None:
    p = parts()
    assert build_executor(p, FakeRuntime(), WorkerConfig("w1"), can_move=False).dispatcher is None
    assert build_executor(p, FakeRuntime(), WorkerConfig("w1")).dispatcher is p.dispatcher


def test_worker_config_reads_the_backend_settings() -> None:
    s = Settings(store="memory", dispatch="memory", lease_seconds=7, max_attempts=5, retry_backoff_seconds=0.5)
    config = worker_config(s, "w9")
    assert (config.worker_id, config.lease_seconds, config.max_attempts, config.retry_backoff_seconds) == (
        "w9",
        7,
        5,
        0.5,
    )
    assert worker_config(s).worker_id != worker_config(s).worker_id  # a fresh id per worker


def test_parts_without_a_work_source_have_no_worker_loop() -> None:
    p = parts()
    p.source = None
    with pytest.raises(ValueError, match="run-job"):
        build_worker(p, FakeRuntime(), ["fast"], WorkerConfig("w1"), grace_seconds=1.0)
