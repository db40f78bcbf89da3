"""The embedded SQLite database and the job store on it.

One database file is shared by the API process and worker processes: WAL mode lets readers
proceed beside the single writer, and ``busy_timeout`` makes writers queue instead of failing.
Each thread gets its own connection (sqlite3 connections must not be shared across threads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from difflane.errors import Conflict, NotFound, Unavailable, VersionConflict
from difflane.jobs import Job, JobState, Principal
from difflane.store import records
from difflane.store.base import (
    CHANGES_KEPT,
    PRUNE_EVERY,
    Change,
    ChangeLogGap,
    IdempotencyKey,
    MakeDeliverableIn,
    prune_through,
)

_MIGRATIONS = sorted(
    (p for p in resources.files("difflane.store").joinpath("sql").iterdir() if p.name.endswith(".sql")),
    key=lambda p: p.name,
)


class Database:
    """Connections to one SQLite file, with its schema migrated on open.

    ``migrations`` are SQL scripts applied in order (``PRAGMA user_version`` counts them); by
    default the embedded job database's (``store/sql/*.sql``). ``name`` goes into error messages.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = 5000,
        migrations: Sequence[str] | None = None,
        name: str = "job database",
        synchronous: Literal["normal", "full"] = "normal",
    ) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self.name = name
        self.busy_timeout_ms = busy_timeout_ms
        self._migrations = (
            list(migrations)
            if migrations is not None
            else [script.read_text(encoding="utf-8") for script in _MIGRATIONS]
        )
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        # Threads of one process take turns here instead of in SQLite's busy handler, whose
        # sleeps (up to 100 ms each) would turn contention into long tail latency. Other
        # processes still wait through busy_timeout.
        self._write_lock = threading.Lock()
        with self._unavailable_on_error("open"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._migrate()

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode: a commit survives a process crash; only an OS crash or power
            # loss can lose the last commits. FULL fsyncs every commit (see note 0007).
            conn.execute(f"PRAGMA synchronous = {'FULL' if self.synchronous == 'full' else 'NORMAL'}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._unavailable_on_error("read"):
            yield self.connection()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front (BEGIN IMMEDIATE), so it never deadlocks on upgrade."""
        with self._write_lock, self._unavailable_on_error("write"):
            conn = self.connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def ping(self) -> None:
        with self.read() as conn:
            conn.execute("PRAGMA user_version").fetchall()

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    @contextlib.contextmanager
    def _unavailable_on_error(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except (sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
            raise Unavailable(f"{self.name} unavailable ({what}): {exc}", retry_after=2) from exc

    def _migrate(self) -> None:
        with self.write() as conn:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(self._migrations, start=1):
                if number > current:
                    for statement in _statements(script):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number}")


def _statements(script: str) -> list[str]:
    # executescript() would commit our transaction; split instead (our SQL has no ';' in strings).
    # A trigger's body holds ';' of its own: pieces are joined until SQLite calls them complete.
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    out: list[str] = []
    pending = ""
    for piece in "\n".join(lines).split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                out.append(pending.strip().removesuffix(";"))
            pending = ""
    if pending.strip(" \n;"):
        out.append(pending.strip().removesuffix(";"))
    return out


# Runs inside the transaction that writes a queued record (its creation, a retry, a move to another
# lane): the embedded queue's entry commits with the record, so the two never disagree.
MakeDeliverableInSqlite = MakeDeliverableIn[sqlite3.Connection]


class SqliteJobStore:
    def __init__(
        self,
        db: Database,
        *,
        make_deliverable_in: MakeDeliverableInSqlite | None = None,
        on_update: Callable[[Job], None] | None = None,
        changes_kept: int = CHANGES_KEPT,
        prune_every: int = PRUNE_EVERY,
    ) -> None:
        if changes_kept < 1 or prune_every < 1:
            raise ValueError("changes_kept and prune_every must be at least 1")
        self.db = db
        self._make_deliverable_in = make_deliverable_in
        self._on_update = on_update  # after commit: tells watchers (event streams) to look
        self.changes_kept = changes_kept
        self.prune_every = prune_every

    def create(self, job: Job, idempotency: IdempotencyKey | None = None) -> tuple[Job, bool]:
        stored = _with_version(job, 1)
        with self.db.write() as conn:
            if idempotency is not None:
                row = conn.execute(
                    "SELECT fingerprint, job_id FROM idempotency_keys WHERE owner = ? AND key = ?",
                    (job.owner.key, idempotency.key),
                ).fetchone()
                if row is not None:
                    return self._replay(conn, row, idempotency), False
                conn.execute(
                    "INSERT INTO idempotency_keys (owner, key, fingerprint, job_id) VALUES (?, ?, ?, ?)",
                    (job.owner.key, idempotency.key, idempotency.fingerprint, job.id),
                )
            text = records.dumps(stored)
            try:
                conn.execute(
                    "INSERT INTO jobs (id, owner, state, version, record) VALUES (?, ?, ?, 1, ?)",
                    (job.id, job.owner.key, job.state.value, text),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"job {job.id} already exists", code="job_exists") from exc
            conn.execute("INSERT INTO job_history (job_id, version, record) VALUES (?, 1, ?)", (job.id, text))
            if self._make_deliverable_in is not None:
                self._make_deliverable_in(conn, stored)
            self._prune_if_due(conn)
        return stored, True

    @staticmethod
    def _replay(conn: sqlite3.Connection, row: tuple[str, str], idempotency: IdempotencyKey) -> Job:
        fingerprint, job_id = row
        if fingerprint != idempotency.fingerprint:
            raise Conflict(
                "this Idempotency-Key was already used with a different request",
                code="idempotency_key_reused",
            )
        found = conn.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if found is None:  # the job was purged; the key must not silently create a new one
            raise Conflict("this Idempotency-Key refers to a job that no longer exists", code="idempotency_key_reused")
        return records.loads(found[0])

    def find_replay(self, owner: Principal, idempotency: IdempotencyKey) -> Job | None:
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT fingerprint, job_id FROM idempotency_keys WHERE owner = ? AND key = ?",
                (owner.key, idempotency.key),
            ).fetchone()
            return self._replay(conn, row, idempotency) if row is not None else None

    def get(self, job_id: str) -> Job | None:
        with self.db.read() as conn:
            row = conn.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return records.loads(row[0]) if row else None

    def update(self, job: Job, expected_version: int) -> Job:
        stored = _with_version(job, expected_version + 1)
        text = records.dumps(stored)
        with self.db.write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state = ?, version = ?, record = ? WHERE id = ? AND version = ?",
                (job.state.value, stored.version, text, job.id, expected_version),
            )
            if cur.rowcount == 0:
                exists = conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job.id,)).fetchone()
                if exists is None:
                    raise NotFound(f"job {job.id} not found")
                raise VersionConflict(f"job {job.id} is not at version {expected_version}")
            conn.execute(
                "INSERT INTO job_history (job_id, version, record) VALUES (?, ?, ?)",
                (job.id, stored.version, text),
            )
            if self._make_deliverable_in is not None and stored.state is JobState.QUEUED:
                self._make_deliverable_in(conn, stored)
            self._prune_if_due(conn)
        if self._on_update is not None:
            self._on_update(stored)
        return stored

    def list_by_owner(
        self, owner: Principal, *, state: JobState | None = None, before: str | None = None, limit: int = 20
    ) -> list[Job]:
        sql = "SELECT record FROM jobs WHERE owner = ?"
        args: list[object] = [owner.key]
        if state is not None:
            sql += " AND state = ?"
            args.append(state.value)
        if before is not None:
            sql += " AND id < ?"
            args.append(before)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self.db.read() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [records.loads(r[0]) for r in rows]

    def list_unfinished(self, limit: int) -> list[Job]:
        """Queued and running jobs of every owner, oldest first (for the controller)."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT record FROM jobs WHERE state IN ('queued', 'running') ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [records.loads(r[0]) for r in rows]

    def history(self, job_id: str, after_version: int = 0) -> list[Job]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT record FROM job_history WHERE job_id = ? AND version > ? ORDER BY version",
                (job_id, after_version),
            ).fetchall()
        return [records.loads(r[0]) for r in rows]

    def last_change(self) -> int:
        with self.db.read() as conn:
            row = conn.execute("SELECT max(seq) FROM job_changes").fetchone()
        return int(row[0] or 0)

    def changes_since(self, seq: int, limit: int = 1000) -> list[Change]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT seq, job_id, version FROM job_changes WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
            # Read after the rows (two statements, two snapshots): the mark only rises, so a prune
            # in between can make this report a gap that the rows did not have (one needless
            # resync), never hide one that they had.
            pruned = conn.execute("SELECT seq FROM job_changes_pruned").fetchone()[0]
        if max(seq, 0) < pruned:  # no change has a seq below 1
            raise ChangeLogGap(seq, pruned)
        return [Change(s, job_id, version) for s, job_id, version in rows]

    def _prune_if_due(self, conn: sqlite3.Connection) -> None:
        # Inside the write's own transaction: no second turn at the write lock, and no write that
        # committed while its prune failed. Due by the log's own length (store.base.prune_through),
        # not by this process's count of its writes: short-lived writers (a `run-job` process
        # writes a few dozen times and exits) would otherwise never reach a count, and the log
        # would grow forever. One statement of two point reads (the rowid's max, the mark).
        newest, pruned = conn.execute(
            "SELECT (SELECT coalesce(max(seq), 0) FROM job_changes), (SELECT seq FROM job_changes_pruned)"
        ).fetchone()
        through = prune_through(newest, pruned, self.changes_kept, self.prune_every)
        if through > pruned:
            conn.execute("DELETE FROM job_changes WHERE seq > ? AND seq <= ?", (pruned, through))
            conn.execute("UPDATE job_changes_pruned SET seq = ?", (through,))

    def ping(self) -> None:
        self.db.ping()

    def close(self) -> None:
        self.db.close()


def _with_version(job: Job, version: int) -> Job:
    return dataclasses.replace(job, version=version)
