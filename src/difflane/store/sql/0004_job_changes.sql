-- The change feed of event streams (issue 10): one row per written version, in commit order, so
-- one API process can ask "what changed since seq N?" with a single range read on the rowid
-- instead of every open stream re-reading its job. A trigger keeps it beside job_history without
-- touching the write path. seq never goes backwards: SQLite has one writer at a time, the row is
-- written inside the writer's transaction, and pruning (0005) never deletes the newest row.
CREATE TABLE job_changes (
    seq         INTEGER PRIMARY KEY,        -- the rowid: max + 1 on every insert
    job_id      TEXT NOT NULL,
    version     INTEGER NOT NULL
);

CREATE TRIGGER job_changes_follow_history AFTER INSERT ON job_history
BEGIN
    INSERT INTO job_changes (job_id, version) VALUES (NEW.job_id, NEW.version);
END;
