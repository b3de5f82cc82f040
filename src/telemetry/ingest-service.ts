import { Counter, Histogram } from 'prom-client';
import type { Logger } from 'pino';
import type { PubSub } from '../cache/types.js';
import { AppError, badRequest, fromDatabaseError, notFound, type ErrorDetail } from '../http/errors.js';
import { isoUtc } from '../http/time.js';
import type { Metrics } from '../metrics/metrics.js';
import type { NodeRegistry } from '../metadata/registry.js';
import type { LatestStore } from './latest.js';
import type { IngestQueue } from './queue.js';
import { DEFAULT_INTERVAL_SECONDS, ReadingValidator, type IngestRow, type Rejection } from './validate.js';
import type { GroupCommitWriter, WriteResult } from './writer.js';

/** Pub/sub channel: nodes' latest readings changed. Message per write: one JSON { nodeId, timestamp, receivedAt, reading } per line, one line per node. */
export const TELEMETRY_LATEST_CHANNEL = 'telemetry.latest';
/** Pub/sub channel: readings were written. Message per write: JSON array of { nodeId, from, to } (epoch ms, half-open). */
export const TELEMETRY_CHANGED_CHANNEL = 'telemetry.changed';

/** Problems listed in the details of a batch none of whose readings is valid. */
const MAX_LISTED_PROBLEMS = 1000;

/** Largest batch the contract allows. */
export const MAX_BATCH_READINGS = 10_000;

export interface BatchResult {
  stored: number;
  duplicates: number;
  rejected: Rejection[];
}

export interface AsyncBatchResult {
  queued: number;
  rejected: Rejection[];
}

/** GET /api/telemetry/:nodeId/latest: the reading plus arrival time, age and staleness. */
export interface LatestView {
  [field: string]: unknown;
  nodeId: string;
  /** Measurement time, RFC 3339 UTC. */
  timestamp: string;
  receivedAt: string;
  /** now − measurement time, seconds (ms precision). */
  ageSeconds: number;
  /** True when older than 3 × the node's telemetryIntervalSeconds. */
  stale: boolean;
}

export interface IngestMetrics {
  ingested: Counter;
  duplicates: Counter;
  rejected: Counter<'reason'>;
  flushSize: Histogram;
  flushSeconds: Histogram;
  directWrites: Counter;
  directConflicts: Counter;
}

export function createIngestMetrics(metrics: Metrics): IngestMetrics {
  const registers = [metrics.registry];
  return {
    ingested: new Counter({ name: 'telemetry_ingested_readings_total', help: 'Readings stored (new or corrected)', registers }),
    duplicates: new Counter({ name: 'telemetry_duplicate_readings_total', help: 'Readings identical to a stored one (no-op re-sends)', registers }),
    rejected: new Counter({ name: 'telemetry_rejected_readings_total', help: 'Readings rejected at ingestion, by reason', labelNames: ['reason'], registers }),
    flushSize: new Histogram({ name: 'telemetry_flush_readings', help: 'Readings per group-commit write', buckets: [1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 20000], registers }),
    directWrites: new Counter({ name: 'telemetry_direct_writes_total', help: 'Group-commit writes whose rows were all new and went straight into telemetry (no staging, no conflict handling)', registers }),
    directConflicts: new Counter({ name: 'telemetry_direct_write_conflicts_total', help: 'Direct writes that met an existing key (written meanwhile by another instance) and were redone on the staged path', registers }),
    flushSeconds: new Histogram({ name: 'telemetry_flush_duration_seconds', help: 'Time of one group-commit write, from start to answered', buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers }),
  };
}

export interface IngestServiceDeps {
  nodes: NodeRegistry;
  writer: GroupCommitWriter;
  queue: IngestQueue;
  latest: LatestStore;
  pubsub: PubSub;
  metrics: IngestMetrics;
  logger: Logger;
  acceptUnknownNodes: boolean;
  retentionDays: number;
}

let lastStampUs = 0;

/**
 * Arrival time in epoch ms with a microsecond fraction, strictly increasing within this process, so
 * that of two versions of a key the later request's wins (last write wins by arrival; see the
 * writer's upsert). Not unique across processes: the writer tells written rows from re-sends by
 * what its upsert returned, never by stamp.
 */
export function arrivalStamp(): number {
  let us = Date.now() * 1000;
  if (us <= lastStampUs) us = lastStampUs + 1;
  lastStampUs = us;
  return us / 1000;
}

/** Ingestion rules: validation, sync (group commit) and async (queue) writes, latest values. */
export class TelemetryIngestService {
  readonly validator: ReadingValidator;

  constructor(private readonly deps: IngestServiceDeps) {
    this.validator = new ReadingValidator({
      node: (id) => deps.nodes.get(id),
      acceptUnknownNodes: deps.acceptUnknownNodes,
      retentionDays: deps.retentionDays,
    });
  }

  /** Validates a batch; every reading is either a row or a rejection. */
  validateBatch(readings: readonly unknown[], now = arrivalStamp()): { rows: IngestRow[]; rejected: Rejection[] } {
    const rows: IngestRow[] = [];
    const rejected: Rejection[] = [];
    for (let i = 0; i < readings.length; i++) {
      const r = this.validator.checkBatchReading(readings[i], i, now);
      if ('rejection' in r) {
        rejected.push(r.rejection);
        this.deps.metrics.rejected.inc({ reason: r.reason });
      } else rows.push(r);
    }
    if (rows.length === 0) {
      const details: ErrorDetail[] = [];
      let problems = 0;
      for (const rej of rejected) {
        for (const e of rej.errors) if (problems++ < MAX_LISTED_PROBLEMS) details.push(e);
      }
      const listed = problems > MAX_LISTED_PROBLEMS ? ` (the first ${MAX_LISTED_PROBLEMS} of ${problems} problems are listed)` : '';
      throw badRequest(`none of the ${readings.length} readings is valid${listed}`, details, 'NO_VALID_READINGS');
    }
    return { rows, rejected };
  }

  /** POST /api/telemetry/batch: answered once the stored readings are committed. */
  async ingestBatch(readings: readonly unknown[]): Promise<BatchResult> {
    const { rows, rejected } = this.validateBatch(readings);
    const counts = await this.write(rows);
    return { ...counts, rejected };
  }

  /** POST /api/telemetry/batch?mode=async: answered once the readings are in the durable queue. */
  async enqueueBatch(readings: readonly unknown[]): Promise<AsyncBatchResult> {
    const { rows, rejected } = this.validateBatch(readings);
    await this.deps.queue.enqueue(rows);
    return { queued: rows.length, rejected };
  }

  /** POST /api/telemetry/:nodeId. */
  async ingestOne(nodeId: string, reading: unknown): Promise<{ stored: number; duplicates: number }> {
    const r = this.validator.check(reading, 0, '', arrivalStamp(), nodeId);
    if ('rejection' in r) {
      this.deps.metrics.rejected.inc({ reason: r.reason });
      const first = r.rejection.errors[0];
      const code = r.reason === 'unknown_node' ? 'UNKNOWN_NODE' : 'VALIDATION_ERROR';
      throw badRequest(`request body: ${first.path} ${first.message}`, r.rejection.errors, code);
    }
    return this.write([r]);
  }

  /** Writes validated rows through group commit; a database outage becomes 503 + Retry-After. */
  async write(rows: IngestRow[]): Promise<{ stored: number; duplicates: number }> {
    try {
      return await this.deps.writer.submit(rows);
    } catch (err) {
      if (err instanceof AppError) throw err;
      const mapped = fromDatabaseError(err);
      if (mapped && mapped.statusCode >= 500) throw mapped;
      throw err;
    }
  }

  /** GET /api/telemetry/:nodeId/latest. */
  async latest(nodeId: string, now = Date.now()): Promise<LatestView> {
    let entry;
    try {
      entry = await this.deps.latest.get(nodeId);
    } catch (err) {
      throw fromDatabaseError(err) ?? err;
    }
    if (!entry) throw notFound(`node ${nodeId} has no readings`, 'NO_READINGS');
    const interval = this.deps.nodes.get(nodeId)?.telemetryIntervalSeconds ?? DEFAULT_INTERVAL_SECONDS;
    const age = now - entry.ts;
    return { ...entry.reading, nodeId: entry.reading.nodeId as string, timestamp: entry.reading.timestamp as string, receivedAt: isoUtc(entry.receivedAt), ageSeconds: age / 1000, stale: age > 3 * interval * 1000 };
  }

  /** Writer hook, after the requests are answered: metrics and pub/sub fan-out. */
  published(result: WriteResult, rows: number, seconds: number): void {
    const m = this.deps.metrics;
    m.ingested.inc(result.stored);
    if (result.duplicates) m.duplicates.inc(result.duplicates);
    m.flushSize.observe(rows);
    m.flushSeconds.observe(seconds);
    if (result.direct) m.directWrites.inc();
    if (result.directConflict) m.directConflicts.inc();
    // One message per channel and write, not one per node: with Redis each message is a command
    // on every instance. telemetry.latest is newline-delimited so the SSE hub can log each line
    // as it is, without parsing and re-serialising; telemetry.changed is a JSON array.
    if (result.latest.length) {
      const lines: string[] = [];
      for (const c of result.latest) {
        lines.push(`{"nodeId":${JSON.stringify(c.nodeId)},"timestamp":"${c.timestampIso}","receivedAt":"${c.receivedAtIso}","reading":${c.readingJson}}`);
      }
      void this.deps.pubsub.publish(TELEMETRY_LATEST_CHANNEL, lines.join('\n'));
    }
    if (result.changed.length) void this.deps.pubsub.publish(TELEMETRY_CHANGED_CHANNEL, JSON.stringify(result.changed));
  }
}
