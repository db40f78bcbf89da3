"""Starting a worker process: wiring, signals, the model runtime."""

from __future__ import annotations

import logging
import os
import signal
import socket
import uuid
from types import FrameType

from difflane import wiring
from difflane.dispatch.base import WorkSource
from difflane.errors import InvalidInput
from difflane.jobs import is_job_id
from difflane.settings import Settings
from difflane.telemetry import logging as log_setup
from difflane.worker.consumer import Worker
from difflane.worker.executor import Executor, Outcome, WorkerConfig
from difflane.worker.runtime import Runtime

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def default_runtime(settings: Settings) -> Runtime:
    from difflane.worker.diffusers_runtime import DiffusersRuntime

    return DiffusersRuntime(settings.hf_home_path, device=settings.device)


def _executor(settings: Settings, parts: wiring.Components, runtime: Runtime) -> Executor:
    config = WorkerConfig(
        worker_id=new_worker_id(),
        lease_seconds=settings.lease_seconds,
        max_attempts=settings.max_attempts,
        retry_backoff_seconds=settings.retry_backoff_seconds,
    )
    return Executor(parts.store, parts.blobs, parts.catalog, runtime, config)


def _source(parts: wiring.Components) -> WorkSource:
    if parts.source is None:
        raise InvalidInput("this dispatch backend hands jobs to `difflane run-job`; there is no queue to serve")
    return parts.source


def run_worker(settings: Settings, *, runtime: Runtime | None = None, max_jobs: int | None = None) -> None:
    log_setup.setup(settings.log_level, settings.log_format)
    parts = wiring.build(settings)
    lanes = settings.lanes or sorted(parts.catalog.lanes())
    unknown = set(lanes) - parts.catalog.lanes()
    if unknown:
        raise InvalidInput(f"no model in the catalog uses lane(s) {', '.join(sorted(unknown))}")
    runtime = runtime or default_runtime(settings)
    worker = Worker(
        _source(parts), _executor(settings, parts, runtime), lanes, grace_seconds=settings.shutdown_grace_seconds
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping after the current job", signal.Signals(signum).name)
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for spec in parts.catalog:  # load what this worker serves before taking work
        if spec.lane in lanes:
            runtime.load(spec)
    try:
        worker.run(max_jobs=max_jobs)
    finally:
        runtime.close()
        parts.close()


class _OneShotDelivery:
    """``run-job`` has no queue: settlement is the exit code, the attempt count is the record's."""

    def __init__(self, job_id: str, lane: str, attempt: int) -> None:
        self.job_id, self.lane, self.attempt = job_id, lane, attempt
        self.settled: str | None = None

    def ack(self) -> None:
        self.settled = "ack"

    def retry(self, delay: float = 0.0) -> None:
        self.settled = "retry"

    def dead_letter(self, reason: str) -> None:
        self.settled = "dead_letter"

    def renew(self, seconds: float) -> bool:
        return True


def run_one(settings: Settings, job_id: str, *, runtime: Runtime | None = None) -> int:
    """Exit code: 0 the job is final (or needs nothing), 1 retry later, 2 it can never succeed."""
    log_setup.setup(settings.log_level, settings.log_format)
    if not is_job_id(job_id):
        log.error("not a job id: %r", job_id)
        return 2
    parts = wiring.build(settings)
    try:
        job = parts.store.get(job_id)
        if job is None:
            log.error("job %s not found", job_id)
            return 2
        runtime = runtime or default_runtime(settings)
        delivery = _OneShotDelivery(job_id, job.lane, job.attempts + 1)
        executor = _executor(settings, parts, runtime)
        outcome = executor.execute(delivery)
        if outcome is Outcome.FAILED:
            final = parts.store.get(job_id)
            return 2 if final and final.error and final.error.code.value == "invalid_input" else 0
        return 1 if outcome is Outcome.REQUEUED else 0
    finally:
        parts.close()
