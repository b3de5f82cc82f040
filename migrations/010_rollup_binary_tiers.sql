-- Rollup tiers of 2, 4 and 8 hours between the 1-hour and 1-day tiers (UTC-aligned, same columns
-- and meaning as the others). A local day in a zone whose offset is a whole number of hours then
-- reads at most about five rows (e.g. Europe/Berlin, 23:00Z to 23:00Z: 1 h + 8 h + 4 h + 2 h + 1 h)
-- instead of 24 hourly ones; weeks and months in such zones likewise.
CREATE TABLE telemetry_rollup_2h (LIKE telemetry_rollup_15m INCLUDING ALL);
CREATE TABLE telemetry_rollup_4h (LIKE telemetry_rollup_15m INCLUDING ALL);
CREATE TABLE telemetry_rollup_8h (LIKE telemetry_rollup_15m INCLUDING ALL);

-- Existing rollups: each new tier composed from the one below it, as the refresher builds them.
DO $$
DECLARE
  t record;
BEGIN
  FOR t IN SELECT * FROM (VALUES ('telemetry_rollup_2h', 'telemetry_rollup_1h', interval '2 hours', 1),
                                 ('telemetry_rollup_4h', 'telemetry_rollup_2h', interval '4 hours', 2),
                                 ('telemetry_rollup_8h', 'telemetry_rollup_4h', interval '8 hours', 3)) v(target, source, width, ord)
           ORDER BY ord
  LOOP
    EXECUTE format(
      $f$INSERT INTO %I (node_id, field, bucket_start, n, sum, min, max, first_v, first_ts, last_v, last_ts, integral, held, exported_kwh, imported_kwh, available_s)
         SELECT r.node_id, r.field, date_bin(%L, r.bucket_start, TIMESTAMPTZ '1970-01-01T00:00:00Z') AS s,
                sum(r.n), sum(r.sum), min(r.min), max(r.max),
                (array_agg(r.first_v ORDER BY r.bucket_start) FILTER (WHERE r.n > 0))[1], min(r.first_ts),
                (array_agg(r.last_v ORDER BY r.bucket_start DESC) FILTER (WHERE r.n > 0))[1], max(r.last_ts),
                sum(r.integral), sum(r.held), sum(r.exported_kwh), sum(r.imported_kwh), sum(r.available_s)
         FROM %I r GROUP BY r.node_id, r.field, s$f$,
      t.target, t.width, t.source);
  END LOOP;
END $$;
