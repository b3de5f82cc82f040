-- Raw telemetry, range-partitioned by measurement day (UTC). Primary key (node_id, ts):
-- a reading is identified by its node and measurement time.
CREATE TABLE telemetry (
  node_id              text NOT NULL,
  ts                   timestamptz NOT NULL,
  received_at          timestamptz NOT NULL DEFAULT now(),
  power_kw             double precision NOT NULL,
  reactive_power_kvar  double precision,
  voltage_v            double precision,
  current_a            double precision,
  frequency_hz         double precision,
  state_of_charge_pct  double precision,
  temperature_c        double precision,
  irradiance_wm2       double precision,
  wind_speed_ms        double precision,
  grid_import_kw       double precision,
  grid_export_kw       double precision,
  health_status        text,
  quality              text,
  extra                jsonb,
  -- soft anomalies found at ingestion: bit 1 = out of range (|powerKw| > 1.1 x capacityKw),
  -- bit 2 = late arrival (received more than 3 x telemetryIntervalSeconds after measurement),
  -- bit 4 = corrected (this reading replaced an earlier, different one for the same key)
  flags                smallint NOT NULL DEFAULT 0,
  PRIMARY KEY (node_id, ts)
) PARTITION BY RANGE (ts);

-- Creates the daily partition holding `day` (UTC) if it does not exist. Safe under concurrency.
CREATE FUNCTION ensure_telemetry_partition(day date) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  part text := 'telemetry_' || to_char(day, 'YYYYMMDD');
BEGIN
  IF to_regclass(part) IS NULL THEN
    PERFORM pg_advisory_xact_lock(7460002, (day - date '2000-01-01'));
    IF to_regclass(part) IS NULL THEN
      -- The re-check can miss a partition another session just created (the catalog snapshot is
      -- not refreshed by an advisory lock), so losing that race is not an error.
      BEGIN
        EXECUTE format('CREATE TABLE %I PARTITION OF telemetry FOR VALUES FROM (%L) TO (%L)',
                       part, (day::timestamp AT TIME ZONE 'UTC'), ((day + 1)::timestamp AT TIME ZONE 'UTC'));
      EXCEPTION WHEN duplicate_table THEN
        NULL;
      END;
    END IF;
  END IF;
  RETURN part;
END $$;

-- The newest reading per node by measurement time, kept on write.
-- reading: the reading in API shape (camelCase, nodeId and timestamp included, absent fields omitted).
-- version: a fresh sequence value on every change of the row (taken under the row lock, so it grows in
-- commit order per node); caches keep the
-- highest version they saw, so a slow cache fill can never overwrite a newer value.
CREATE SEQUENCE telemetry_latest_version_seq;
CREATE TABLE telemetry_latest (
  node_id      text PRIMARY KEY,
  ts           timestamptz NOT NULL,
  received_at  timestamptz NOT NULL,
  reading      jsonb NOT NULL,
  version      bigint NOT NULL DEFAULT nextval('telemetry_latest_version_seq')
);

-- 15-minute buckets (node, bucket start) whose raw readings changed after their rollup was computed.
-- Ingestion marks them in the same transaction as the write; the rollup refresher clears them.
CREATE TABLE telemetry_dirty_buckets (
  node_id       text NOT NULL,
  bucket_start  timestamptz NOT NULL,
  marked_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (node_id, bucket_start)
);

-- Per node and UTC day of measurement: ingestion events that leave no row of their own.
-- duplicates: identical re-sends; corrected: re-sends with changed values that replaced a reading.
-- (Out-of-range and late readings are flagged on the row itself: telemetry.flags.)
CREATE TABLE telemetry_quality_daily (
  node_id     text NOT NULL,
  day         date NOT NULL,
  duplicates  bigint NOT NULL DEFAULT 0,
  corrected   bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (node_id, day)
);

-- Async ingestion queue used when no Redis is configured: one row per accepted batch.
-- Consumed with FOR UPDATE SKIP LOCKED and deleted in the same transaction as the write.
CREATE TABLE telemetry_ingest_queue (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  enqueued_at  timestamptz NOT NULL DEFAULT now(),
  readings     integer NOT NULL CHECK (readings > 0),
  payload      text NOT NULL
);
