import type { HealthCheck } from '../cache/types.js';
import type { IngestRow } from './validate.js';

/** Queue depth and lag for /health and /metrics. */
export interface QueueStats {
  /** Readings accepted and not yet written. */
  depth: number;
  /** Age of the oldest waiting entry (s); 0 when empty. */
  lagSeconds: number;
}

/**
 * The durable async-ingestion queue. `enqueue` resolves only once the readings are durable in the
 * queue (as durable as its backend), and throws an AppError 503 (with Retry-After) when the queue
 * is full or its backend is down: a reading is never accepted into nothing. Consumers write with
 * at-least-once delivery; writes are idempotent, so a redo is harmless.
 */
export interface IngestQueue {
  readonly kind: 'redis' | 'postgres';
  enqueue(rows: readonly IngestRow[]): Promise<void>;
  stats(): Promise<QueueStats>;
  health(): Promise<HealthCheck>;
  /** Starts the consumers. */
  start(): Promise<void>;
  /** Stops taking new entries and waits for those being written. */
  stop(): Promise<void>;
}

/** Queue payload: one compact array per reading (field order as in IngestRow). */
export function encodeRows(rows: readonly IngestRow[]): string {
  return JSON.stringify(rows.map((r) => [r.nodeId, r.ts, r.receivedAt, r.values, r.healthStatus, r.quality, r.extra, r.flags, r.intervalS]));
}

export function decodeRows(payload: string): IngestRow[] {
  const arr = JSON.parse(payload) as [string, number, number, (number | null)[], string | null, string | null, string | null, number, number][];
  return arr.map(([nodeId, ts, receivedAt, values, healthStatus, quality, extra, flags, intervalS]) => ({ nodeId, ts, receivedAt, values, healthStatus, quality, extra, flags, intervalS }));
}

/** Seconds a client should wait before retrying when the queue is full. */
export const QUEUE_FULL_RETRY_AFTER = 5;
