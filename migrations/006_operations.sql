-- Last outcome of each maintenance job, written by whichever instance held the job's lock.
CREATE TABLE job_runs (
  job           text PRIMARY KEY,
  instance_id   text NOT NULL,
  started_at    timestamptz NOT NULL,
  finished_at   timestamptz,
  duration_ms   double precision,
  outcome       text NOT NULL CHECK (outcome IN ('running','ok','error')),
  error         text,
  details       jsonb,
  runs          bigint NOT NULL DEFAULT 0,
  failures      bigint NOT NULL DEFAULT 0
);
