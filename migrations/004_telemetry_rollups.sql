-- Telemetry rollups, in the manner of continuous aggregates: one row per (node, numeric field,
-- bucket) at three tiers. 15 minutes is the base (every real UTC offset is a multiple of it, so
-- any local day is a whole number of these buckets); 1 hour and 1 UTC day are built from it.
-- `field` is the code of a numeric reading field (src/telemetry/rollup-fields.ts).
--
-- Per bucket [bucket_start, bucket_start + tier):
--   n, sum, min, max               readings with a value whose time lies in the bucket
--   first_v/first_ts, last_v/last_ts  earliest and latest of those readings
--   integral, held                 Σ value × seconds and seconds held within the bucket under the hold
--                                  rule (a reading holds until the next one, at most 3 × the node's
--                                  telemetry interval), including the hold of readings before the bucket
--   exported_kwh, imported_kwh,    powerKw only: energy of positive / negative power held in the bucket,
--   available_s                    and seconds held by readings whose health is not fault/offline
-- A bucket with neither readings nor held time has no row.
CREATE TABLE telemetry_rollup_15m (
  node_id       text NOT NULL,
  field         smallint NOT NULL,
  bucket_start  timestamptz NOT NULL,
  n             integer NOT NULL,
  sum           double precision NOT NULL,
  min           double precision,
  max           double precision,
  first_v       double precision,
  first_ts      timestamptz,
  last_v        double precision,
  last_ts       timestamptz,
  integral      double precision NOT NULL,
  held          double precision NOT NULL,
  exported_kwh  double precision,
  imported_kwh  double precision,
  available_s   double precision,
  -- Time before field: every access is a time range of one node, for one or several fields.
  PRIMARY KEY (node_id, bucket_start, field)
);

CREATE TABLE telemetry_rollup_1h (LIKE telemetry_rollup_15m INCLUDING ALL);
CREATE TABLE telemetry_rollup_1d (LIKE telemetry_rollup_15m INCLUDING ALL);

-- Per node, the hold cap (seconds) its rollups were computed with. When the node's telemetry
-- interval changes, queries stop trusting the rollups until the refresher has recomputed them.
CREATE TABLE telemetry_rollup_state (
  node_id      text PRIMARY KEY,
  cap_seconds  integer NOT NULL,
  updated_at   timestamptz NOT NULL DEFAULT now()
);
