"""The worker loop: form batches from its lanes' queues, execute them, stop cleanly on request."""

from __future__ import annotations

import logging
import threading
import time

from difflane.telemetry import metrics
from difflane.worker.batching import Batcher
from difflane.worker.executor import Executor, Outcome

log = logging.getLogger(__name__)

RECEIVE_TIMEOUT_S = 5.0
ERROR_PAUSE_S = 1.0


class Worker:
    def __init__(self, batcher: Batcher, executor: Executor, *, grace_seconds: float) -> None:
        self.batcher = batcher
        self.executor = executor
        self.grace_seconds = grace_seconds
        self._stopping = threading.Event()
        self._give_back_at: float | None = None
        executor.should_give_back = self._past_grace
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
        while not self._stopping.is_set() and (max_jobs is None or done < max_jobs):
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
                self._stopping.wait(ERROR_PAUSE_S)
        self.batcher.give_back()
        self._stopping.set()
        log.info("worker stopped", extra={"processed": {k.value: v for k, v in self.processed.items() if v}})

    def request_stop(self) -> None:
        """Stop taking work; the batch in hand may finish within the grace period, else it is given back."""
        if not self._stopping.is_set():
            self._give_back_at = time.monotonic() + self.grace_seconds
            self._stopping.set()
            self.batcher.source.wake()

    def _past_grace(self) -> bool:
        return self._give_back_at is not None and time.monotonic() >= self._give_back_at

    def _renew_held(self) -> None:
        while not self._stopping.wait(self.batcher.lease_seconds / 3):
            self.batcher.renew_held()
