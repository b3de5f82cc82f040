-- Invalidations logged by direct telemetry writes: one row per write instead of one dirty mark per
-- (node, 15-minute bucket). A write of 2,000 readings over 1,000 nodes upserted ~1,500 marks
-- (measured at ~7 µs of database time per reading, as much as half the cost of the rows themselves);
-- it now inserts one row. The rollup refresher expands pending rows into telemetry_dirty_buckets
-- (one upsert per bucket per refresher run, not per write) and deletes them in the same transaction.
-- Until then queries treat every bucket in `ranges` as dirty for every node: coarser than the marks,
-- never less exact.
CREATE TABLE telemetry_invalidation_log (
  id         bigserial PRIMARY KEY,
  -- The 15-minute buckets (epoch-aligned) that the write's readings hold into, over all its nodes.
  ranges     tstzmultirange NOT NULL,
  -- Per node, the same as runs of bucket numbers (epoch ms / 900,000), JSON [[nodeId, start, end, ...], ...],
  -- each run half-open; read only by the refresher.
  marks      text NOT NULL,
  logged_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX telemetry_invalidation_log_ranges ON telemetry_invalidation_log USING gist (ranges);
-- A queue: vacuum after a fixed number of changes, as telemetry_dirty_buckets.
ALTER TABLE telemetry_invalidation_log SET (
  autovacuum_vacuum_scale_factor = 0,
  autovacuum_vacuum_threshold = 1000,
  autovacuum_analyze_scale_factor = 0,
  autovacuum_analyze_threshold = 1000
);
