import path from 'node:path';
import { Counter, Histogram } from 'prom-client';
import type { Domain, Infra } from '../container.js';
import { ensurePartitionsAhead } from './partitions.js';
import { operationsRoutes } from './routes.js';
import { runRollupRetention, runTelemetryRetention } from './retention.js';

export { archiveTable, restoreArchive, verifyArchive, readManifest, type ArchiveManifest, type RestoreResult } from './archive.js';
export { runTelemetryRetention, runRollupRetention, listTelemetryPartitions } from './retention.js';
export { ensurePartitionsAhead, partitionName } from './partitions.js';

/** Job names, as shown in /health (`checks.jobs.jobs`), `job_runs` and the `job` metric label. */
export const OPERATIONS_JOBS = {
  partitions: 'telemetry-partitions',
  telemetryRetention: 'telemetry-retention',
  rollupRetention: 'rollup-retention',
} as const;

export interface OperationsOptions {
  /** Daily partitions created ahead of today (UTC), 0–366; default 7. */
  partitionDaysAhead?: number;
  /** Job intervals (ms). Defaults: partitions 1 h, telemetry retention 1 h, rollup retention 6 h. */
  partitionsIntervalMs?: number;
  retentionIntervalMs?: number;
  rollupRetentionIntervalMs?: number;
}

/**
 * Maintenance of the data itself: partitions ahead of time, raw-telemetry retention (archive,
 * then drop whole daily partitions), rollup retention, and the metrics that show it; also
 * registers the database-pool gauges. Every job runs on one instance at a time (infra.jobs).
 */
export function createOperationsDomain(infra: Infra, opts: OperationsOptions = {}): Domain {
  const { config, db, jobs, metrics } = infra;
  const daysAhead = opts.partitionDaysAhead ?? 7;
  const archiveDir = path.join(config.dataDir, 'archive');

  metrics.trackPools(db.readPool === db.pool ? { primary: db.pool } : { primary: db.pool, read: db.readPool });

  const registers = [metrics.registry];
  const retentionRuns = new Counter({ name: 'retention_runs_total', help: 'Retention runs by target (telemetry, rollups) and outcome (ok, error)', labelNames: ['target', 'outcome'], registers });
  const partitionsDropped = new Counter({ name: 'retention_partitions_dropped_total', help: 'Raw-telemetry partitions archived and dropped', registers });
  const rowsRemoved = new Counter({ name: 'retention_rows_removed_total', help: 'Rows removed by retention, by table family (telemetry: archived with their partition; rollups: deleted)', labelNames: ['target'], registers });
  const archiveBytes = new Counter({ name: 'archive_written_bytes_total', help: 'Bytes of gzip CSV archives written', registers });
  const archiveStep = new Histogram({ name: 'retention_partition_step_duration_seconds', help: 'Time of each step of removing one telemetry partition (detach, archive, drop)', labelNames: ['step'], buckets: [0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300], registers });

  async function counted<T>(target: string, fn: () => Promise<T>): Promise<T> {
    try {
      const r = await fn();
      retentionRuns.inc({ target, outcome: 'ok' });
      return r;
    } catch (err) {
      retentionRuns.inc({ target, outcome: 'error' });
      throw err;
    }
  }

  jobs.register({
    name: OPERATIONS_JOBS.partitions,
    intervalMs: opts.partitionsIntervalMs ?? 3_600_000,
    // Soon after start: a fresh database has no partition for today yet.
    initialDelayMs: 1_000,
    async run() {
      const names = await ensurePartitionsAhead(db.pool, Date.now(), daysAhead);
      return { ensured: names.length, through: names[names.length - 1] };
    },
  });

  jobs.register({
    name: OPERATIONS_JOBS.telemetryRetention,
    intervalMs: opts.retentionIntervalMs ?? 3_600_000,
    initialDelayMs: 60_000,
    async run({ logger, signal }) {
      const r = await counted('telemetry', () =>
        runTelemetryRetention(db.pool, {
          retentionDays: config.retentionTelemetryDays,
          archiveDir,
          instanceId: jobs.instanceId,
          logger,
          signal,
          onDropped: (m, t) => {
            partitionsDropped.inc();
            rowsRemoved.inc({ target: 'telemetry' }, m.rowCount);
            archiveBytes.inc(m.bytes);
            archiveStep.observe({ step: 'detach' }, t.detachMs / 1000);
            archiveStep.observe({ step: 'archive' }, t.archiveMs / 1000);
            archiveStep.observe({ step: 'drop' }, t.dropMs / 1000);
          },
        }),
      );
      return { cutoff: r.cutoff, dropped: r.dropped.map((d) => d.partition), rows: r.dropped.reduce((a, d) => a + d.rows, 0), archiveDir };
    },
  });

  jobs.register({
    name: OPERATIONS_JOBS.rollupRetention,
    intervalMs: opts.rollupRetentionIntervalMs ?? 6 * 3_600_000,
    initialDelayMs: 90_000,
    async run({ signal }) {
      const deleted = await counted('rollups', () => runRollupRetention(db.pool, { retentionDays: config.retentionRollupDays, signal }));
      rowsRemoved.inc({ target: 'rollups' }, Object.values(deleted).reduce((a, b) => a + b, 0));
      return { deleted };
    },
  });

  return { routes: operationsRoutes(jobs) };
}
