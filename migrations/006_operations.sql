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

-- One row per raw-telemetry partition the retention job archived. DATA_DIR is local to the
-- instance that held the job lock, so `instance_id` and `file` say where the archive lives.
-- `dropped_at` is set once the partition is gone; a row without it is work to resume.
CREATE TABLE telemetry_archives (
  partition    text PRIMARY KEY,
  day          date NOT NULL,
  instance_id  text NOT NULL,
  file         text NOT NULL,
  sha256       text NOT NULL,
  bytes        bigint NOT NULL,
  row_count    bigint NOT NULL,
  node_count   integer NOT NULL,
  min_ts       timestamptz,
  max_ts       timestamptz,
  archived_at  timestamptz NOT NULL DEFAULT now(),
  dropped_at   timestamptz
);
