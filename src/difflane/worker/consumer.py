"""The worker loop: receive deliveries for its lanes, execute them, stop cleanly on request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from difflane.dispatch.base import WorkSource
from difflane.worker.executor import Executor, Outcome

log = logging.getLogger(__name__)

RECEIVE_TIMEOUT_S = 5.0
ERROR_PAUSE_S = 1.0


class Worker:
    def __init__(self, source: WorkSource, executor: Executor, lanes: Sequence[str], *, grace_seconds: float) -> None:
        self.source = source
        self.executor = executor
        self.lanes = list(lanes)
        self.grace_seconds = grace_seconds
        self._stopping = threading.Event()
        self._give_back_at: float | None = None
        executor.should_give_back = self._past_grace
        self.processed: dict[Outcome, int] = {o: 0 for o in Outcome}

    def run(self, *, max_jobs: int | None = None) -> None:
        """Serve until ``request_stop`` (or ``max_jobs`` executions, for tests and benchmarks)."""
        log.info("worker ready", extra={"lanes": self.lanes, "worker_id": self.executor.config.worker_id})
        done = 0
        while not self._stopping.is_set() and (max_jobs is None or done < max_jobs):
            try:
                delivery = self.source.receive(self.lanes, RECEIVE_TIMEOUT_S)
                if delivery is None:
                    continue
                outcome = self.executor.execute(delivery)
                self.processed[outcome] += 1
                done += 1
            except Exception:
                log.exception("worker loop error; pausing before the next receive")
                self._stopping.wait(ERROR_PAUSE_S)
        log.info("worker stopped", extra={"processed": {k.value: v for k, v in self.processed.items() if v}})

    def request_stop(self) -> None:
        """Stop taking work; the job in hand may finish within the grace period, else it is given back."""
        if not self._stopping.is_set():
            self._give_back_at = time.monotonic() + self.grace_seconds
            self._stopping.set()
            self.source.wake()

    def _past_grace(self) -> bool:
        return self._give_back_at is not None and time.monotonic() >= self._give_back_at
