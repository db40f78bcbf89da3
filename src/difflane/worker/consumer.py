"""The worker loop: form batches from its lanes' queues, execute them, stop cleanly on request."""

from __future__ import annotations

import logging
import threading
import time

from difflane.telemetry import metrics
from difflane.worker.batching import Batcher
from difflane.worker.executor import Executor, Outcome
from difflane.worker.shutdown import Shutdown

log = logging.getLogger(__name__)

RECEIVE_TIMEOUT_S = 5.0
ERROR_PAUSE_S = 1.0


class Worker:
    """Built by ``worker.assembly.build_worker``, which hands the executor the same ``shutdown``."""

    def __init__(self, batcher: Batcher, executor: Executor, shutdown: Shutdown) -> None:
        self.batcher = batcher
        self.executor = executor
        self.shutdown = shutdown
        self.processed: dict[Outcome, int] = {o: 0 for o in Outcome}
        self.batches = 0

    @property
    def lanes(self) -> list[str]:
        return self.batcher.lanes

    def run(self, *, max_jobs: int | None = None) -> None:
        """Serve until ``request_stop`` (or ``max_jobs`` jobs, for tests and benchmarks)."""
        log.info("worker serving", extra={"lanes": self.lanes, "worker_id": self.executor.config.worker_id})
        keeper = threading.Thread(target=self._renew_held, name="held-leases", daemon=True)
        keeper.start()
        done = 0
        while not self.shutdown.requested and (max_jobs is None or done < max_jobs):
            try:
                batch = self.batcher.next_batch(RECEIVE_TIMEOUT_S)
                if not batch:
                    continue
                busy_since = time.monotonic()
                outcomes = self.executor.execute_batch(batch)
                metrics.WORKER_BUSY.labels(batch[0].lane).inc(time.monotonic() - busy_since)
                self.batches += 1
                for outcome in outcomes:
                    self.processed[outcome] += 1
                done += len(outcomes)
            except Exception:
                log.exception("worker loop error; pausing before the next receive")
                self.shutdown.wait(ERROR_PAUSE_S)
        self.batcher.give_back()
        self.shutdown.request()  # ends the lease keeper too when max_jobs ended the loop
        log.info("worker stopped", extra={"processed": {k.value: v for k, v in self.processed.items() if v}})

    def request_stop(self) -> None:
        """Stop taking work; the batch in hand may finish within the grace period, else it is given back."""
        if self.shutdown.request():
            self.batcher.source.wake()

    def _renew_held(self) -> None:
        while not self.shutdown.wait(self.batcher.lease_seconds / 3):
            self.batcher.renew_held()
