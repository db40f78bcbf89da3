"""The embedded queue: SQLite rows with leases, shared by the API and worker processes.

A leased row's ``available_at`` is its lease expiry, so "ready" is one condition
(``available_at <= now``) whether a row was never taken, is backing off, or its worker died.
Waiting workers sleep on a doorbell until a dispatch rings it or the next row comes due.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from difflane.dispatch import doorbell
from difflane.jobs import Job
from difflane.store.sqlite import Database
from difflane.telemetry import tracing

# Upper bound on a worker's sleep even without a ring: guards against a lost ring.
FALLBACK_POLL_S = 1.0
WORKER_ROLE = "worker"


class EmbeddedQueue:
    """Dispatcher (API side) and WorkSource (worker side) over the embedded database."""

    def __init__(
        self, db: Database, bell_dir: Path, *, lease_seconds: float = 30.0, enqueued_by_store: bool = False
    ) -> None:
        self.db = db
        self.bell_dir = bell_dir
        self.lease_seconds = lease_seconds
        # True when the job store writes the queue row in the record's own transaction (it calls
        # ``enqueue_in`` for every write that leaves a job queued): dispatch then only rings.
        self.enqueued_by_store = enqueued_by_store
        # One doorbell per receiving thread: a ring wakes every waiter, not just one of them.
        self._local = threading.local()
        self._bells: list[doorbell.Doorbell] = []
        self._bells_lock = threading.Lock()
        self._woken = threading.Event()

    # --- API side --------------------------------------------------------------------------

    @staticmethod
    def enqueue_in(conn: sqlite3.Connection, job: Job) -> None:
        """Insert the queue row inside someone else's transaction (the job store's write of a
        queued record). A row already on the job's lane is left as it is (its lease, its back-off)."""
        now = time.time()
        # Idempotent for the same lane; a job moved to another lane (e.g. after running out of
        # memory) takes its entry along, and the old holder's lease token stops matching.
        conn.execute(
            "INSERT INTO queue (job_id, lane, available_at, enqueued_at, trace_context) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET lane = excluded.lane, available_at = excluded.available_at, "
            "lease_token = NULL, lease_expires_at = NULL, trace_context = excluded.trace_context "
            "WHERE queue.lane != excluded.lane",
            (job.id, job.lane, now, now, _trace_column()),
        )

    def dispatch(self, job: Job) -> None:
        # With the SQLite job store the row committed with the record: then this is only a ring,
        # never a second write transaction that could fail after the job was accepted.
        if not self.enqueued_by_store:
            with self.db.read() as conn:
                row = conn.execute("SELECT lane FROM queue WHERE job_id = ?", (job.id,)).fetchone()
            if row is None or row[0] != job.lane:
                with self.db.write() as conn:
                    self.enqueue_in(conn, job)
        doorbell.ring(self.bell_dir, WORKER_ROLE)

    def cancel(self, job: Job) -> None:
        with self.db.write() as conn:
            conn.execute("DELETE FROM queue WHERE job_id = ? AND lease_token IS NULL", (job.id,))

    def backlog(self, lane: str) -> int:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT count(*) FROM queue WHERE lane = ? AND (lease_token IS NULL OR available_at <= ?)",
                (lane, time.time()),
            ).fetchone()
        return int(row[0])

    def ping(self) -> None:
        self.db.ping()

    # --- worker side -----------------------------------------------------------------------

    def receive(self, lanes: Sequence[str], timeout: float) -> EmbeddedDelivery | None:
        bell = self._bell()
        deadline = time.monotonic() + timeout
        while True:
            claimed = self._claim(lanes, 1)
            if claimed:
                return claimed[0]
            if timeout <= 0:
                return None  # a receive that never waits leaves a wake() for the one that does
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._woken.is_set():
                self._woken.clear()
                return None
            bell.wait(min(remaining, self._until_next_due(lanes), FALLBACK_POLL_S))

    def receive_ready(self, lanes: Sequence[str], limit: int) -> list[EmbeddedDelivery]:
        return self._claim(lanes, limit) if limit > 0 else []

    def wake(self) -> None:
        """Make a waiting ``receive`` in this process return None now."""
        self._woken.set()
        with self._bells_lock:
            bells = list(self._bells)
        for bell in bells:
            doorbell.ring_one(bell.path)

    def close(self) -> None:
        with self._bells_lock:
            for bell in self._bells:
                bell.close()
            self._bells.clear()
        self._local = threading.local()

    def _bell(self) -> doorbell.Doorbell:
        bell: doorbell.Doorbell | None = getattr(self._local, "bell", None)
        if bell is None:
            bell = self._local.bell = doorbell.Doorbell(self.bell_dir, WORKER_ROLE)
            with self._bells_lock:
                self._bells.append(bell)
        return bell

    def _claim(self, lanes: Sequence[str], limit: int) -> list[EmbeddedDelivery]:
        """The ``limit`` rows due first, leased in one write transaction (a drain of a batch is
        one SQLite commit, not one per job)."""
        marks = ",".join("?" * len(lanes))
        now = time.time()
        until = now + self.lease_seconds
        with self.db.write() as conn:
            rows = conn.execute(
                f"SELECT job_id, lane, deliveries, trace_context FROM queue WHERE lane IN ({marks}) "
                "AND available_at <= ? ORDER BY available_at LIMIT ?",
                (*lanes, now, limit),
            ).fetchall()
            tokens = [secrets.token_hex(8) for _ in rows]
            conn.executemany(
                "UPDATE queue SET lease_token = ?, available_at = ?, lease_expires_at = ?, "
                "deliveries = deliveries + 1 WHERE job_id = ?",
                [(token, until, until, row[0]) for token, row in zip(tokens, rows, strict=True)],
            )
        return [
            EmbeddedDelivery(self, job_id, lane, deliveries + 1, token, json.loads(trace) if trace else {})
            for token, (job_id, lane, deliveries, trace) in zip(tokens, rows, strict=True)
        ]

    def _until_next_due(self, lanes: Sequence[str]) -> float:
        marks = ",".join("?" * len(lanes))
        with self.db.read() as conn:
            row = conn.execute(f"SELECT min(available_at) FROM queue WHERE lane IN ({marks})", tuple(lanes)).fetchone()
        if row[0] is None:
            return FALLBACK_POLL_S
        return max(float(row[0]) - time.time(), 0.0) + 0.001


class EmbeddedDelivery:
    def __init__(
        self,
        queue: EmbeddedQueue,
        job_id: str,
        lane: str,
        attempt: int,
        token: str,
        trace_context: dict[str, str] | None = None,
    ) -> None:
        self._queue = queue
        self.job_id = job_id
        self.lane = lane
        self.attempt = attempt
        self._token = token
        self.trace_context = trace_context or {}  # the queuing request's, for the worker's spans

    def ack(self) -> None:
        with self._queue.db.write() as conn:
            conn.execute("DELETE FROM queue WHERE job_id = ? AND lease_token = ?", (self.job_id, self._token))

    def retry(self, delay: float = 0.0) -> None:
        with self._queue.db.write() as conn:
            conn.execute(
                "UPDATE queue SET lease_token = NULL, lease_expires_at = NULL, available_at = ? "
                "WHERE job_id = ? AND lease_token = ?",
                (time.time() + delay, self.job_id, self._token),
            )
        if delay <= 0:
            doorbell.ring(self._queue.bell_dir, WORKER_ROLE)

    def dead_letter(self, reason: str) -> None:
        with self._queue.db.write() as conn:
            cur = conn.execute("DELETE FROM queue WHERE job_id = ? AND lease_token = ?", (self.job_id, self._token))
            if cur.rowcount:
                conn.execute(
                    "INSERT OR REPLACE INTO dead_letters (job_id, lane, reason, deliveries, at) VALUES (?, ?, ?, ?, ?)",
                    (self.job_id, self.lane, reason, self.attempt, time.time()),
                )

    def renew(self, seconds: float) -> bool:
        until = time.time() + seconds
        with self._queue.db.write() as conn:
            cur = conn.execute(
                "UPDATE queue SET available_at = ?, lease_expires_at = ? WHERE job_id = ? AND lease_token = ?",
                (until, until, self.job_id, self._token),
            )
        return cur.rowcount == 1


def _trace_column() -> str | None:
    carrier = tracing.inject()
    return json.dumps(carrier, separators=(",", ":")) if carrier else None
