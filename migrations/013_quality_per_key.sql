-- Data quality's ingestion counters per reading key instead of per UTC day, so that any [from, to)
-- range sums exactly (per day, a range could only count whole days). One row per key that was
-- re-sent identically (duplicates) or replaced with changed values (corrected); keys never re-sent
-- have no row.
CREATE TABLE telemetry_quality_keys (
  node_id     text NOT NULL,
  ts          timestamptz NOT NULL,
  duplicates  bigint NOT NULL DEFAULT 0,
  corrected   bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (node_id, ts)
);

-- Counters kept per day so far stay with their day, at its first instant.
INSERT INTO telemetry_quality_keys (node_id, ts, duplicates, corrected)
SELECT node_id, day::timestamp AT TIME ZONE 'UTC', duplicates, corrected FROM telemetry_quality_daily;

DROP TABLE telemetry_quality_daily;
