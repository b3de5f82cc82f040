-- telemetry_dirty_buckets is a work queue: writes add marks, the rollup refresher deletes them by
-- the thousand. Every historical query looks up the marks of its range, and dead index entries of
-- deleted marks make that lookup visit them all (measured: 35,000 dead entries after a refresh,
-- 2.8 ms for a lookup that finds none). Vacuum it after a fixed number of changes rather than a
-- fraction of its (small) size.
ALTER TABLE telemetry_dirty_buckets SET (
  autovacuum_vacuum_scale_factor = 0,
  autovacuum_vacuum_threshold = 2000,
  autovacuum_analyze_scale_factor = 0,
  autovacuum_analyze_threshold = 2000
);
