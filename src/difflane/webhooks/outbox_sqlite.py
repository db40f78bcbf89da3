"""The webhook outbox in its own SQLite file (the embedded and single-VM shapes).

Kept apart from the job store so that it works beside any store (SQLite, memory, Azure Blob)
and never touches the store's schema. Several API processes may share one file: every step is
idempotent or guarded (watch cursors advance with compare-and-set, message ids are unique,
deliveries are claimed with a lease before they are sent), so two notifiers never send one
message twice except after a crash, where Standard Webhooks' ``webhook-id`` lets receivers
drop the repeat (at-least-once).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from difflane.store.sqlite import Database
from difflane.webhooks import fairness
from difflane.webhooks.outbox import HookWatch, NewDelivery, Pending, context_from_text, context_text

SCHEMA = """
CREATE TABLE IF NOT EXISTS watches (
    job_id        TEXT PRIMARY KEY,
    last_version  INTEGER NOT NULL DEFAULT 0,   -- the last job version turned into events
    created_at    REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    id            TEXT PRIMARY KEY,             -- the webhook-id: same on every attempt
    job_id        TEXT NOT NULL,
    version       INTEGER NOT NULL,             -- per job, deliveries go out in version order
    event         TEXT NOT NULL,
    url           TEXT NOT NULL,
    body          BLOB NOT NULL,
    state         TEXT NOT NULL DEFAULT 'pending',  -- pending | failed (delivered rows are deleted)
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       REAL NOT NULL,
    claimed_until REAL,
    last_error    TEXT,
    updated_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_at);
CREATE INDEX IF NOT EXISTS deliveries_by_job ON deliveries (job_id, state, version);
"""
# Who a delivery is for, so that one receiver host or one owner cannot take every sender
# (webhooks/fairness.py). Rows from before this migration share the empty key and drain.
FAIRNESS_KEYS = """
ALTER TABLE deliveries ADD COLUMN host TEXT NOT NULL DEFAULT '';
ALTER TABLE deliveries ADD COLUMN owner TEXT NOT NULL DEFAULT '';
"""
# The submitting request's trace context (W3C, as JSON), kept with the watch and copied into each
# delivery, so the delivery's span joins the job's trace; and the lane, for that span. Rows from
# before this migration have NULL and '': their deliveries go out in a trace of their own.
TRACE_CONTEXT = """
ALTER TABLE watches ADD COLUMN trace_context TEXT;
ALTER TABLE deliveries ADD COLUMN trace_context TEXT;
ALTER TABLE deliveries ADD COLUMN lane TEXT NOT NULL DEFAULT '';
"""


class SqliteOutbox:
    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        self._scratch: str | None = None
        if str(path) == ":memory:":
            # A private temporary file rather than SQLite's shared-cache memory mode, whose table
            # locks fail at once instead of waiting (used with store=memory and in tests).
            self._scratch = tempfile.mkdtemp(prefix="difflane-webhooks-")
            path = Path(self._scratch) / "webhooks.db"
        migrations = [SCHEMA, FAIRNESS_KEYS, TRACE_CONTEXT]
        self._db = Database(path, busy_timeout_ms=busy_timeout_ms, migrations=migrations, name="webhook state")
        self.path = self._db.path
        self._read = self._db.read
        self._write = self._db.write

    # --- submit side ---------------------------------------------------------------------------

    def watch(self, job_id: str, now: float, trace_context: Mapping[str, str] | None = None) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO watches (job_id, created_at, trace_context) VALUES (?, ?, ?)",
                (job_id, now, context_text(trace_context)),
            )

    def unwatch(self, job_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM watches WHERE job_id = ?", (job_id,))

    # --- notifier side -------------------------------------------------------------------------

    def watches(self) -> list[HookWatch]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT job_id, last_version, created_at, trace_context FROM watches ORDER BY job_id"
            ).fetchall()
        return [HookWatch(job, last, created, context_from_text(trace)) for job, last, created, trace in rows]

    def advance(
        self, job_id: str, expected: int, version: int, deliveries: Sequence[NewDelivery], finished: bool, now: float
    ) -> bool:
        """Record the events of versions up to ``version`` at once; False if another notifier did."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE watches SET last_version = ? WHERE job_id = ? AND last_version = ?", (version, job_id, expected)
            )
            if cur.rowcount == 0:
                return False
            for d in deliveries:
                if d.event == "progress":
                    # A newer step replaces one never attempted: a slow receiver gets fewer steps.
                    conn.execute(
                        "DELETE FROM deliveries WHERE job_id = ? AND event = 'progress' AND state = 'pending' "
                        "AND attempts = 0 AND claimed_until IS NULL",
                        (job_id,),
                    )
                conn.execute(
                    "INSERT OR IGNORE INTO deliveries "
                    "(id, job_id, version, event, url, body, next_at, updated_at, host, owner, lane, trace_context) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _delivery_row(d, now),
                )
            if finished:
                conn.execute("DELETE FROM watches WHERE job_id = ?", (job_id,))
        return True

    def claim_due(
        self, now: float, limit: int, lease_seconds: float, caps: fairness.Caps = fairness.DEFAULT_CAPS
    ) -> list[Pending]:
        """Due deliveries, at most one per job (the oldest), fair across hosts and owners and
        within their caps (see fairness.py), claimed for ``lease_seconds``."""
        if limit <= 0:
            return []
        with self._write() as conn:
            # The first pending delivery of each job. Past the k-th of one (host, owner) pair, with
            # k the smaller cap, a row can never be picked this round (its host or its owner is
            # full by then), so it is not even read: a huge backlog costs nothing here.
            rows = conn.execute(
                "SELECT id, host, owner, next_at FROM ("
                " SELECT d.id, d.host, d.owner, d.next_at,"
                " ROW_NUMBER() OVER (PARTITION BY d.host, d.owner ORDER BY d.next_at) AS pair_rank"
                " FROM deliveries d WHERE d.state = 'pending' AND d.next_at <= ?"
                " AND (d.claimed_until IS NULL OR d.claimed_until < ?)"
                " AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.job_id = d.job_id AND e.state = 'pending'"
                " AND e.version < d.version)"
                ") WHERE pair_rank <= ?",
                (now, now, min(caps.per_host, caps.per_owner)),
            ).fetchall()
            busy = conn.execute(
                "SELECT host, owner FROM deliveries WHERE state = 'pending' AND claimed_until >= ?", (now,)
            ).fetchall()
            chosen = fairness.pick(
                (fairness.Candidate(*row) for row in rows),
                limit=limit,
                caps=caps,
                busy_hosts=fairness.count(h for h, _ in busy),
                busy_owners=fairness.count(o for _, o in busy),
            )
            claimed = []
            for delivery_id in chosen:
                conn.execute("UPDATE deliveries SET claimed_until = ? WHERE id = ?", (now + lease_seconds, delivery_id))
                row = conn.execute(
                    "SELECT id, job_id, event, url, body, attempts, owner, lane, trace_context FROM deliveries "
                    "WHERE id = ?",
                    (delivery_id,),
                ).fetchone()
                claimed.append(_pending(row))
        return claimed

    def delivered(self, delivery_id: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))

    def retry_at(self, delivery_id: str, attempts: int, next_at: float, error: str, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE deliveries SET attempts = ?, next_at = ?, claimed_until = NULL, last_error = ?, "
                "updated_at = ? WHERE id = ?",
                (attempts, next_at, error[:500], now, delivery_id),
            )

    def give_up(self, delivery_id: str, attempts: int, error: str, now: float) -> None:
        """Keep the record for operators; later deliveries of the job are no longer held back."""
        with self._write() as conn:
            conn.execute(
                "UPDATE deliveries SET state = 'failed', attempts = ?, claimed_until = NULL, last_error = ?, "
                "updated_at = ? WHERE id = ?",
                (attempts, error[:500], now, delivery_id),
            )

    def prune(self, before: float) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM deliveries WHERE state = 'failed' AND updated_at < ?", (before,))

    def deliveries(self, job_id: str | None = None) -> list[dict[str, object]]:
        """Undelivered and failed deliveries (for operators and tests)."""
        sql = "SELECT id, job_id, version, event, state, attempts, next_at, last_error FROM deliveries"
        args: tuple[str, ...] = ()
        if job_id is not None:
            sql, args = sql + " WHERE job_id = ?", (job_id,)
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY job_id, version", args).fetchall()
        names = ("id", "job_id", "version", "event", "state", "attempts", "next_at", "last_error")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def close(self) -> None:
        self._db.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


def _delivery_row(d: NewDelivery, now: float) -> tuple[object, ...]:
    host, trace = fairness.host_of(d.url), context_text(d.trace_context)
    return (d.id, d.job_id, d.version, d.event, d.url, d.body, now, now, host, d.owner, d.lane, trace)


def _pending(row: Any) -> Pending:
    delivery_id, job_id, event, url, body, attempts, owner, lane, trace = row
    return Pending(delivery_id, job_id, event, url, bytes(body), attempts, owner, lane, context_from_text(trace))
