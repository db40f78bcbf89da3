-- Unfinished jobs across owners, oldest first: what the controller and sweepers look at.
CREATE INDEX jobs_by_state ON jobs (state, id);
