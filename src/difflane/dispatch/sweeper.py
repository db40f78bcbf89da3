"""No accepted job waits forever: an outbox of undispatched jobs, and a sweeper that sends them.

With a store that cannot share a transaction with the queue (Azure Blob with Service Bus, or
with the embedded SQLite queue), a crash or a failed send between "record written" and "message
sent" would strand the job. So:

1. the store's ``create`` writes an outbox entry *before* the record (``DispatchOutbox.add``);
2. ``OutboxDispatcher.dispatch`` sends, then removes the entry. A failed send is logged and left
   to the sweeper: the job is accepted (record + outbox entry are durable), the client gets 202;
3. the ``Sweeper`` lists entries older than ``grace_s`` (or flagged by a failed send), and for
   each: a queued job is dispatched again (duplicate detection and the record make a second
   message harmless), any other state needs nothing; then the entry goes. An entry whose record
   never appeared (the create died in between) is dropped after ``abandon_s``.

Every API process may run a sweeper: sweeps are idempotent. It starts with the first
``dispatch``, ``ping`` or ``backlog`` call, so worker processes (which never call them) don't run one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from difflane.dispatch.base import Dispatcher
from difflane.jobs import Job, JobState
from difflane.store.base import JobStore

log = logging.getLogger(__name__)


class DispatchOutbox(Protocol):
    """Jobs accepted but maybe not yet sent (not the webhooks' outbox: ``webhooks.outbox``)."""

    def add(self, job: Job) -> None: ...

    def remove(self, job_id: str) -> None: ...

    def pending(self) -> Iterable[tuple[str, float]]:
        """(job id, epoch seconds when the entry was written) for every entry."""
        ...


class Sweeper:
    def __init__(
        self,
        store: JobStore,
        outbox: DispatchOutbox,
        send: Callable[[Job], None],
        *,
        interval_s: float = 15.0,
        grace_s: float = 30.0,
        abandon_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.send = send
        self.interval_s = interval_s
        self.grace_s = grace_s  # an entry younger than this may belong to a create still in flight
        self.abandon_s = abandon_s
        self._clock = clock
        self._due: set[str] = set()  # entries whose send failed: no need to wait for the grace
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> int:
        """One pass; returns how many jobs were sent again."""
        with self._lock:
            due, self._due = self._due, set()
        sent = 0
        now = self._clock()
        for job_id, at in self.outbox.pending():
            if job_id not in due and now - at < self.grace_s:
                continue
            try:
                sent += self._settle(job_id, now - at)
            except Exception:  # one entry's trouble must not stop the pass
                log.warning(
                    "sweeper could not handle an outbox entry; next pass", extra={"job_id": job_id}, exc_info=True
                )
                with self._lock:
                    self._due.add(job_id)
        if sent:
            log.info("sweeper sent stranded jobs", extra={"sent": sent})
        return sent

    def _settle(self, job_id: str, age: float) -> int:
        job = self.store.get(job_id)
        if job is None:
            if age > self.abandon_s:
                self.outbox.remove(job_id)  # its create died before the record: nothing to send
            return 0
        sent = 0
        if job.state is JobState.QUEUED:
            self.send(job)
            sent = 1
        self.outbox.remove(job_id)
        return sent

    def nudge(self, job_id: str) -> None:
        """A send failed just now: retry this entry at the next pass, and make that pass soon."""
        with self._lock:
            self._due.add(job_id)
        self._wake.set()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self.interval_s <= 0:
                return
            self._thread = threading.Thread(target=self._loop, name="outbox-sweeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)

    def _loop(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            nudged = self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            if nudged:
                self._stop.wait(backoff)  # a failed send: give the queue a moment, longer each time
            try:
                self.sweep()
                backoff = 1.0
            except Exception:  # the store may be down: try again next period
                log.warning("outbox sweep failed; next period", exc_info=True)
                backoff = min(backoff * 2, 30.0)


class OutboxDispatcher:
    """A Dispatcher that removes the outbox entry after a send, and lets the sweeper finish failures."""

    def __init__(self, inner: Dispatcher, outbox: DispatchOutbox, sweeper: Sweeper) -> None:
        self.inner = inner
        self.outbox = outbox
        self.sweeper = sweeper

    def dispatch(self, job: Job) -> None:
        self.sweeper.start()
        try:
            self.inner.dispatch(job)
        except Exception:  # accepted already (record + outbox): the sweeper sends it
            log.warning("dispatch failed; the sweeper will send the job", extra={"job_id": job.id}, exc_info=True)
            self._leave_to_sweeper(job)
            return
        try:
            self.outbox.remove(job.id)
        except Exception:  # a leftover entry only costs the sweeper one harmless re-send
            log.warning(
                "could not remove the outbox entry of a dispatched job", extra={"job_id": job.id}, exc_info=True
            )

    def _leave_to_sweeper(self, job: Job) -> None:
        # A new job has its entry already; a job moved to another lane by a worker has none yet.
        try:
            self.outbox.add(job)
        except Exception:  # the store is down too: a new job's entry still exists from its create
            log.warning("could not write an outbox entry", extra={"job_id": job.id}, exc_info=True)
        self.sweeper.nudge(job.id)

    def cancel(self, job: Job) -> None:
        self.inner.cancel(job)

    def backlog(self, lane: str) -> int:
        self.sweeper.start()
        return self.inner.backlog(lane)

    def ping(self) -> None:
        self.sweeper.start()
        self.inner.ping()

    def close(self) -> None:
        self.sweeper.stop()
        self.inner.close()
