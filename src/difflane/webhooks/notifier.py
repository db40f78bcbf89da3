"""Turns job versions into webhook deliveries, and delivers them with retries and back-off.

Runs in each API process, in a thread. Each round:
1. tail: for every watched job, read the versions written since the last round
   (``store.history``), turn them into events the job's webhook asked for, and record them in
   the outbox in one transaction with the watch's new cursor (a crash replays, never skips);
2. deliver: claim due deliveries (one per job at a time, so a job's events arrive in order;
   a few per receiver host and per owner, handed out round-robin, so one slow endpoint cannot
   hold every sender: see fairness.py) and send each from a small thread pool, each attempt
   under one overall deadline (sender.py). A failure is retried after ``backoff * 4**n``
   seconds (with jitter, capped), up to ``max_attempts``; a refused URL or a 410 stops at once.
The thread sleeps until a job changes (the embedded shape rings the API's doorbell on every
write) or a second passes.
"""

from __future__ import annotations

import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from difflane.dispatch import doorbell
from difflane.errors import DifflaneError
from difflane.store.base import JobStore
from difflane.telemetry import metrics, tracing
from difflane.webhooks import events
from difflane.webhooks.fairness import DEFAULT_CAPS, Caps
from difflane.webhooks.outbox import HookWatch, NewDelivery, Outbox, Pending
from difflane.webhooks.sender import Sender, SendResult

log = logging.getLogger(__name__)

ORPHAN_GRACE_S = 300.0  # a watch whose job never appeared (its submit failed) is dropped after this
FAILED_RETENTION_S = 7 * 86400.0
IDLE_WAIT_S = 1.0
API_ROLE = "api"  # the doorbell role every job write rings (see api/watch.py)


class Notifier:
    def __init__(
        self,
        store: JobStore,
        outbox: Outbox,
        sender: Sender,
        *,
        base_url: str,
        max_attempts: int = 8,
        backoff_seconds: float = 5.0,
        backoff_max_seconds: float = 3600.0,
        concurrency: int = 8,
        caps: Caps = DEFAULT_CAPS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.sender = sender
        self.base_url = base_url.rstrip("/")
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.concurrency = concurrency
        self.caps = caps
        self.clock = clock
        # A claimed delivery is not taken by another notifier until the sender's time is surely up.
        self.claim_seconds = sender.timeout * 4 + 30
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._bell_path: Path | None = None
        self._in_flight_lock = threading.Lock()

    # --- one round, callable directly (tests) --------------------------------------------------

    def run_once(self) -> int:
        """Tail every watch, then send what is due, inline. Returns the attempts made."""
        self.tail()
        due = self.outbox.claim_due(self.clock(), 100, self.claim_seconds, self.caps)
        for pending in due:
            self.attempt(pending)
        return len(due)

    def tail(self) -> None:
        for watch in self.outbox.watches():
            try:
                self._tail_one(watch)
            except DifflaneError as exc:  # the store is down: next round
                log.warning("webhook tail of job %s failed: %s", watch.job_id, exc.message)
                return

    def attempt(self, pending: Pending) -> SendResult:
        """One attempt, in the job's trace: its span's parent is the submit's ``webhook.watch``
        (the context rode in the outbox row); a row from before that was kept has none, and its
        attempt starts a trace of its own. The settlement and its log line are in the span too."""
        attempts = pending.attempts + 1
        parent = pending.trace_context or None
        with tracing.span("webhook.deliver", span_attributes(pending, attempts), parent=parent, kind="client"):
            started = time.perf_counter()
            outcome = self.sender.send(pending.id, pending.url, pending.body)
            metrics.webhook_attempted(pending.event, outcome.delivered, outcome.retry, time.perf_counter() - started)
            self._settle(pending, attempts, outcome)
        return outcome

    def _settle(self, pending: Pending, attempts: int, outcome: SendResult) -> None:
        now = self.clock()
        extra = {"job_id": pending.job_id, "webhook_id": pending.id, "event": pending.event, "attempt": attempts}
        retry = outcome.retry and attempts < self.max_attempts
        verdict = "delivered" if outcome.delivered else "retry" if retry else "abandoned"
        tracing.set_attributes(outcome_attributes(outcome, verdict))
        if outcome.delivered:
            self.outbox.delivered(pending.id)
            log.info("webhook delivered", extra=extra)
            return
        tracing.set_error(outcome.detail)
        if retry:
            self.outbox.retry_at(pending.id, attempts, now + self.backoff(attempts), outcome.detail, now)
            log.warning("webhook attempt failed (%s); will retry", outcome.detail, extra=extra)
        else:
            self.outbox.give_up(pending.id, attempts, outcome.detail, now)
            log.error("webhook abandoned (%s)", outcome.detail, extra=extra)

    def backoff(self, attempts: int) -> float:
        base = min(self.backoff_seconds * 4.0 ** (attempts - 1), self.backoff_max_seconds)
        return base * random.uniform(0.8, 1.2)  # jitter: spreads retries of many deliveries

    # --- tailing ---------------------------------------------------------------------------------

    def _tail_one(self, watch: HookWatch) -> None:
        now = self.clock()
        versions = self.store.history(watch.job_id, max(watch.last_version - 1, 0))
        if not versions:
            if watch.last_version == 0 and now - watch.created_at > ORPHAN_GRACE_S:
                log.info("dropping the webhook watch of job %s, which does not exist", watch.job_id)
                self.outbox.unwatch(watch.job_id)
            return
        previous = versions[0] if watch.last_version and versions[0].version == watch.last_version else None
        fresh = [v for v in versions if v.version > watch.last_version]
        if not fresh:
            return
        deliveries = []
        for job in fresh:
            event = events.event_of(previous, job)
            previous = job
            if event is None or job.webhook is None or event not in job.webhook.events:
                continue
            body = events.body(event, job, self.base_url, now)
            message = events.message_id(job)
            deliveries.append(
                NewDelivery(
                    message,
                    job.id,
                    job.version,
                    event,
                    job.webhook.url,
                    body,
                    owner=job.owner.key,
                    lane=job.lane,
                    trace_context=watch.trace_context,  # the submit's: each delivery joins the job's trace
                )
            )
        last = fresh[-1]
        self.outbox.advance(watch.job_id, watch.last_version, last.version, deliveries, last.state.terminal, now)

    # --- the background thread -----------------------------------------------------------------

    def start(self, bell_dir: Path | None) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook-send")
        self._thread = threading.Thread(target=self._run, args=(bell_dir,), name="webhook-notifier", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, bell_dir: Path | None) -> None:
        bell = doorbell.Doorbell(bell_dir, API_ROLE) if bell_dir is not None else None
        self._bell_path = bell.path if bell is not None else None
        last_prune = 0.0
        try:
            while not self._stop.is_set():
                try:
                    self.tail()
                    self._send_due()
                    if self.clock() - last_prune > 3600:
                        last_prune = self.clock()
                        self.outbox.prune(last_prune - FAILED_RETENTION_S)
                except Exception:  # the loop must outlive any one bad round
                    log.exception("webhook notifier round failed")
                if bell is not None:
                    bell.wait(IDLE_WAIT_S)
                    self._stop.wait(0.05)  # let a burst of rings (steps) coalesce into one round
                else:
                    self._stop.wait(0.2)
        finally:
            if bell is not None:
                bell.close()

    def _send_due(self) -> None:
        assert self._pool is not None
        with self._in_flight_lock:
            free = self.concurrency - self._in_flight
        for pending in self.outbox.claim_due(self.clock(), free, self.claim_seconds, self.caps):
            with self._in_flight_lock:
                self._in_flight += 1
            self._pool.submit(self._attempt_in_pool, pending)

    def _attempt_in_pool(self, pending: Pending) -> None:
        try:
            self.attempt(pending)
        except Exception:  # the claim expires and a later round retries
            log.exception("webhook attempt crashed", extra={"job_id": pending.job_id})
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1
            if self._bell_path is not None:
                doorbell.ring_one(self._bell_path)  # the job's next delivery may go now


def span_attributes(pending: Pending, attempt: int) -> dict[str, str | int]:
    """What the delivery span says: never the URL (its query may hold a token), never the body."""
    found: dict[str, str | int] = {
        "difflane.job.id": pending.job_id,
        "difflane.webhook.id": pending.id,
        "difflane.webhook.event": pending.event,
        "difflane.webhook.attempt": attempt,
    }
    if pending.lane:
        found["difflane.lane"] = pending.lane
    if pending.owner:
        found["difflane.owner_hash"] = tracing.owner_hash(pending.owner)
    return found


def outcome_attributes(outcome: SendResult, verdict: str) -> dict[str, str | int]:
    found: dict[str, str | int] = {"difflane.webhook.outcome": verdict}
    if outcome.status is not None:
        found["http.response.status_code"] = outcome.status
    return found
