-- The change log is pruned (its oldest rows, by seq range; see store.base.CHANGES_KEPT), so a
-- reader must be able to tell "nothing changed" from "what changed was deleted". This one row holds
-- the highest seq deleted so far: a reader whose seq is older gets ChangeLogGap and resyncs.
-- Pruning never deletes the newest row, so the rowid (max + 1) of job_changes never goes back.
CREATE TABLE job_changes_pruned (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         INTEGER NOT NULL                -- every change with seq <= this is gone; 0: none
);

INSERT INTO job_changes_pruned (id, seq) VALUES (1, 0);
