-- Coarser rollup rows add their children's floating-point sums in time order (ORDER BY
-- bucket_start), the order in which queries fold the same children when they compute a unit from
-- below; a row and its computation from raw readings are then the same doubles, not merely close.
-- Existing rows are recomposed that way, tier by tier from the finest (each from the one below).
DO $$
DECLARE
  t record;
BEGIN
  FOR t IN SELECT * FROM (VALUES ('telemetry_rollup_1h', 'telemetry_rollup_15m', interval '1 hour', 1),
                                 ('telemetry_rollup_2h', 'telemetry_rollup_1h', interval '2 hours', 2),
                                 ('telemetry_rollup_4h', 'telemetry_rollup_2h', interval '4 hours', 3),
                                 ('telemetry_rollup_8h', 'telemetry_rollup_4h', interval '8 hours', 4),
                                 ('telemetry_rollup_1d', 'telemetry_rollup_8h', interval '1 day', 5)) v(target, source, width, ord)
           ORDER BY ord
  LOOP
    EXECUTE format(
      $f$UPDATE %I t
            SET sum = c.sum, integral = c.integral, held = c.held,
                exported_kwh = c.exported_kwh, imported_kwh = c.imported_kwh, available_s = c.available_s
           FROM (SELECT r.node_id, r.field, date_bin(%L, r.bucket_start, TIMESTAMPTZ '1970-01-01T00:00:00Z') AS s,
                        sum(r.sum ORDER BY r.bucket_start) AS sum, sum(r.integral ORDER BY r.bucket_start) AS integral,
                        sum(r.held ORDER BY r.bucket_start) AS held, sum(r.exported_kwh ORDER BY r.bucket_start) AS exported_kwh,
                        sum(r.imported_kwh ORDER BY r.bucket_start) AS imported_kwh, sum(r.available_s ORDER BY r.bucket_start) AS available_s
                   FROM %I r GROUP BY 1, 2, 3) c
          WHERE t.node_id = c.node_id AND t.field = c.field AND t.bucket_start = c.s$f$,
      t.target, t.width, t.source);
  END LOOP;
END $$;
