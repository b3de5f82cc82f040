import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { Counter, Gauge, Histogram } from 'prom-client';
import type { HealthCheck } from '../cache/types.js';
import type { Db } from '../db/pool.js';
import type { Metrics } from '../metrics/metrics.js';

export interface JobContext {
  logger: Logger;
  /** Aborted when the service stops; long jobs check it between steps. */
  signal: AbortSignal;
}

export interface JobDefinition {
  /** Stable name: the lock key, the metrics label and the `job_runs` row. */
  name: string;
  /** Time between the end of one run and the start of the next (ms). */
  intervalMs: number;
  /** Delay before the first run (ms); default: one interval. */
  initialDelayMs?: number;
  /** Returns facts worth showing in /health (rows pruned, buckets refreshed ...). */
  run(ctx: JobContext): Promise<Record<string, unknown> | void>;
}

export interface JobStatus {
  job: string;
  outcome: 'ok' | 'error' | 'skipped' | 'running' | 'never';
  lastRunAt?: string;
  durationMs?: number;
  error?: string;
  details?: Record<string, unknown>;
}

/** Advisory-lock namespace for jobs (first key of the two-int form). */
const JOB_LOCK_NAMESPACE = 7_460_100;

/**
 * Runs maintenance jobs on timers. Each run first takes a PostgreSQL advisory lock named
 * after the job, so across every instance on one database a job runs on one instance at a
 * time; an instance that does not get the lock skips that turn. The outcome of each run is
 * kept in `job_runs` (shared by all instances) and in metrics.
 */
export class JobRunner {
  readonly instanceId = randomUUID();
  private readonly jobs = new Map<string, JobDefinition>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly running = new Map<string, Promise<JobStatus>>();
  private readonly local = new Map<string, JobStatus>();
  private readonly abort = new AbortController();
  private started = false;
  private readonly runsTotal: Counter<'job' | 'outcome'>;
  private readonly duration: Histogram<'job'>;
  private readonly lastSuccess: Gauge<'job'>;

  constructor(
    private readonly db: Db,
    private readonly logger: Logger,
    metrics: Metrics,
  ) {
    this.runsTotal = new Counter({ name: 'job_runs_total', help: 'Maintenance job runs by outcome (ok, error, skipped: another instance held the lock)', labelNames: ['job', 'outcome'], registers: [metrics.registry] });
    this.duration = new Histogram({ name: 'job_duration_seconds', help: 'Maintenance job run time', labelNames: ['job'], buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300], registers: [metrics.registry] });
    this.lastSuccess = new Gauge({ name: 'job_last_success_timestamp_seconds', help: 'Unix time of the last successful run of each job', labelNames: ['job'], registers: [metrics.registry] });
  }

  register(def: JobDefinition): void {
    if (this.jobs.has(def.name)) throw new Error(`job ${def.name} registered twice`);
    this.jobs.set(def.name, def);
    this.local.set(def.name, { job: def.name, outcome: 'never' });
    if (this.started) this.schedule(def, def.initialDelayMs ?? def.intervalMs);
  }

  start(): void {
    this.started = true;
    for (const def of this.jobs.values()) this.schedule(def, def.initialDelayMs ?? def.intervalMs);
  }

  async stop(): Promise<void> {
    this.started = false;
    this.abort.abort();
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    await Promise.allSettled(this.running.values());
  }

  /** Runs a job now (waiting for a run in progress on this instance first). Used by tests and admin tools. */
  async runNow(name: string): Promise<JobStatus> {
    const def = this.jobs.get(name);
    if (!def) throw new Error(`no job named ${name}`);
    const inFlight = this.running.get(name);
    if (inFlight) await inFlight;
    return this.execute(def);
  }

  /** Names of the registered jobs. */
  names(): string[] {
    return [...this.jobs.keys()];
  }

  /** This instance's view of each job's last run. */
  statuses(): JobStatus[] {
    return [...this.local.values()];
  }

  /** For /health: the last run of each job on any instance, from `job_runs`. Failing jobs make it not ok. */
  async health(): Promise<HealthCheck> {
    const { rows } = await this.db.pool.query<{ job: string; outcome: string; finished_at: Date | null; started_at: Date; duration_ms: number | null; error: string | null; details: unknown }>(
      'SELECT job, outcome, started_at, finished_at, duration_ms, error, details FROM job_runs',
    );
    const byName = new Map(rows.map((r) => [r.job, r]));
    const jobs: Record<string, unknown> = {};
    let ok = true;
    for (const name of this.jobs.keys()) {
      const r = byName.get(name);
      if (!r) {
        jobs[name] = { outcome: 'never' };
        continue;
      }
      if (r.outcome === 'error') ok = false;
      jobs[name] = {
        outcome: r.outcome,
        lastRunAt: (r.finished_at ?? r.started_at).toISOString(),
        durationMs: r.duration_ms,
        ...(r.error ? { error: r.error } : {}),
        ...(r.details ? { details: r.details } : {}),
      };
    }
    return { ok, jobs };
  }

  private schedule(def: JobDefinition, delay: number): void {
    if (!this.started) return;
    const t = setTimeout(() => {
      const p = this.execute(def).finally(() => {
        this.running.delete(def.name);
        this.schedule(def, def.intervalMs);
      });
      this.running.set(def.name, p);
    }, delay);
    t.unref();
    this.timers.set(def.name, t);
  }

  private async execute(def: JobDefinition): Promise<JobStatus> {
    let client;
    try {
      client = await this.db.pool.connect();
    } catch (err) {
      return this.record(def.name, { job: def.name, outcome: 'error', error: `no database connection: ${(err as Error).message}` });
    }
    let locked = false;
    try {
      const { rows } = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1, hashtext($2)) AS ok', [JOB_LOCK_NAMESPACE, def.name]);
      locked = rows[0].ok;
      if (!locked) {
        this.runsTotal.inc({ job: def.name, outcome: 'skipped' });
        return { job: def.name, outcome: 'skipped' };
      }
      const startedAt = new Date();
      await client.query(
        `INSERT INTO job_runs (job, instance_id, started_at, outcome) VALUES ($1, $2, $3, 'running')
         ON CONFLICT (job) DO UPDATE SET instance_id = EXCLUDED.instance_id, started_at = EXCLUDED.started_at, outcome = 'running'`,
        [def.name, this.instanceId, startedAt],
      );
      const t0 = performance.now();
      let status: JobStatus;
      try {
        const details = (await def.run({ logger: this.logger.child({ job: def.name }), signal: this.abort.signal })) ?? undefined;
        status = { job: def.name, outcome: 'ok', lastRunAt: new Date().toISOString(), durationMs: round(performance.now() - t0), details };
      } catch (err) {
        this.logger.error({ err, job: def.name }, 'job failed');
        status = { job: def.name, outcome: 'error', lastRunAt: new Date().toISOString(), durationMs: round(performance.now() - t0), error: err instanceof Error ? err.message : String(err) };
      }
      await client.query(
        `UPDATE job_runs SET finished_at = now(), duration_ms = $2, outcome = $3, error = $4, details = $5,
           runs = runs + 1, failures = failures + CASE WHEN $3 = 'error' THEN 1 ELSE 0 END
         WHERE job = $1`,
        [def.name, status.durationMs, status.outcome, status.error ?? null, status.details ? JSON.stringify(status.details) : null],
      );
      return this.record(def.name, status);
    } catch (err) {
      return this.record(def.name, { job: def.name, outcome: 'error', error: err instanceof Error ? err.message : String(err) });
    } finally {
      if (locked) await client.query('SELECT pg_advisory_unlock($1, hashtext($2))', [JOB_LOCK_NAMESPACE, def.name]).catch(() => undefined);
      client.release();
    }
  }

  private record(name: string, status: JobStatus): JobStatus {
    this.local.set(name, status);
    this.runsTotal.inc({ job: name, outcome: status.outcome });
    if (status.durationMs !== undefined) this.duration.observe({ job: name }, status.durationMs / 1000);
    if (status.outcome === 'ok') this.lastSuccess.set({ job: name }, Date.now() / 1000);
    return status;
  }
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
