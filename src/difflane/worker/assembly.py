"""Assembling a worker from the platform's parts, in one place.

``build_worker`` is what ``difflane worker`` runs, and what tests and benchmarks use to get the
same worker in a thread; ``build_executor`` is the part ``difflane run-job`` needs (one job, no
queue). Every collaborator is given at construction, nothing is rewired afterwards: the loop and
the executor share one ``Shutdown`` (the loop stops taking work, the executor gives the batch
back once the grace period is over).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence

from difflane import wiring
from difflane.settings import Settings
from difflane.worker.batching import Batcher
from difflane.worker.consumer import Worker
from difflane.worker.executor import Executor, WorkerConfig
from difflane.worker.runtime import Runtime
from difflane.worker.shutdown import Shutdown


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def worker_config(settings: Settings, worker_id: str | None = None) -> WorkerConfig:
    return WorkerConfig(
        worker_id=worker_id or new_worker_id(),
        lease_seconds=settings.backends.lease_seconds,
        max_attempts=settings.backends.max_attempts,
        retry_backoff_seconds=settings.backends.retry_backoff_seconds,
    )


def build_executor(
    parts: wiring.Components,
    runtime: Runtime,
    config: WorkerConfig,
    *,
    can_move: bool = True,
    shutdown: Shutdown | None = None,
) -> Executor:
    """The executor over ``parts``. Without ``can_move`` an out-of-memory job fails with ``oom``
    instead of moving to a bigger lane (``run-job``: the Kubernetes Job is named after the job,
    so no second Job for another lane could be created)."""
    return Executor(
        parts.store,
        parts.blobs,
        parts.catalog,
        runtime,
        config,
        lanes=parts.lanes,
        dispatcher=parts.dispatcher if can_move else None,
        should_give_back=shutdown.past_grace if shutdown is not None else lambda: False,
    )


def build_worker(
    parts: wiring.Components,
    runtime: Runtime,
    lanes: Sequence[str],
    config: WorkerConfig,
    *,
    grace_seconds: float,
) -> Worker:
    """The worker loop serving ``lanes`` from ``parts.source``: batcher, executor and shutdown."""
    if parts.source is None:
        raise ValueError("these parts have no work source (Kubernetes dispatch runs `difflane run-job`)")
    shutdown = Shutdown(grace_seconds)
    executor = build_executor(parts, runtime, config, shutdown=shutdown)
    batcher = Batcher(parts.source, parts.store, executor.lane, list(lanes), lease_seconds=config.lease_seconds)
    return Worker(batcher, executor, shutdown)
