-- The embedded database: job records, their history, idempotency keys and the embedded queue.
-- One file so that a job record and its queue entry commit in one transaction.

CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,           -- UUIDv7: string order is creation order
    owner       TEXT NOT NULL,              -- "tenant/subject"
    state       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    record      TEXT NOT NULL               -- JSON, see difflane.store.records
) WITHOUT ROWID;

CREATE INDEX jobs_by_owner ON jobs (owner, id);
CREATE INDEX jobs_by_owner_state ON jobs (owner, state, id);

-- Every written version of a record: the source of the events stream (each step, each state).
CREATE TABLE job_history (
    job_id      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    record      TEXT NOT NULL,
    PRIMARY KEY (job_id, version)
) WITHOUT ROWID;

CREATE TABLE idempotency_keys (
    owner       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    PRIMARY KEY (owner, key)
) WITHOUT ROWID;

-- The embedded queue: one row per dispatched job until it is acknowledged.
CREATE TABLE queue (
    job_id            TEXT PRIMARY KEY,
    lane              TEXT NOT NULL,
    available_at      REAL NOT NULL,        -- epoch seconds; later than now while backing off
    lease_token       TEXT,                 -- set while a worker holds the delivery
    lease_expires_at  REAL,
    deliveries        INTEGER NOT NULL DEFAULT 0,
    enqueued_at       REAL NOT NULL
);

CREATE INDEX queue_ready ON queue (lane, available_at);

CREATE TABLE dead_letters (
    job_id      TEXT PRIMARY KEY,
    lane        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    deliveries  INTEGER NOT NULL,
    at          REAL NOT NULL
);
