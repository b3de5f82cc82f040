/**
 * The rollup refresher: turns the invalidation log of direct writes into dirty marks, then
 * recomputes dirty 15-minute buckets from raw readings, rebuilds the
 * coarser buckets above them (1 h, 2 h, 4 h, 8 h, 1 d), and clears the marks it has answered,
 * all in one transaction per node and batch. A mark set again while the refresher worked keeps its row (marked_at is
 * compared on delete), so the next run picks it up.
 */
import type { Logger } from 'pino';
import { withTransaction, type Db } from '../db/pool.js';
import type { NodeRegistry } from '../metadata/registry.js';
import { accumulate, mergeRanges } from './rollup-compute.js';
import { NUMERIC_FIELDS } from './rollup-fields.js';
import { expandInvalidationLog, loadDirtyMarks, loadReadings, loadRollupCaps, markNodeForCapChange, TIER_MS, writeRefreshedBuckets, type BucketRow, type DirtyMark } from './rollup-store.js';

/** Interval assumed for a node without metadata (UNKNOWN_NODES=accept): the `nodes` table default. */
export const DEFAULT_INTERVAL_SECONDS = 60;

/** Hold cap of a node in seconds: 3 × its telemetry interval. */
export function capSecondsOf(nodes: NodeRegistry, nodeId: string): number {
  return 3 * (nodes.get(nodeId)?.telemetryIntervalSeconds ?? DEFAULT_INTERVAL_SECONDS);
}

export interface RefreshResult {
  /** 15-minute buckets recomputed. */
  buckets: number;
  /** Nodes touched. */
  nodes: number;
  /** Nodes whose interval changed, all of whose buckets were marked for recomputation. */
  capChanges: number;
  /** True when marks were left for the next run (batch limit reached). */
  more: boolean;
  /** Invalidation-log rows (one per direct or large write) turned into marks. */
  logged: number;
}

export interface RefresherOptions {
  /** Marks read per batch. */
  batchSize?: number;
  /** Batches per run at most, so one run cannot hold the job forever. */
  maxBatches?: number;
  /** Nodes refreshed at once, each on its own connection (default 2). */
  concurrency?: number;
  /** Marks untouched for less than this are left for a later run (ms, default 0). */
  settleMs?: number;
}

export class RollupRefresher {
  private readonly batchSize: number;
  private readonly maxBatches: number;
  private readonly concurrency: number;
  private readonly settleMs: number;

  constructor(
    private readonly db: Db,
    private readonly nodes: NodeRegistry,
    private readonly logger: Logger,
    opts: RefresherOptions = {},
  ) {
    this.batchSize = opts.batchSize ?? 20_000;
    this.maxBatches = opts.maxBatches ?? 20;
    this.concurrency = Math.max(1, opts.concurrency ?? 2);
    this.settleMs = Math.max(0, opts.settleMs ?? 0);
  }

  /** One refresh run: cap changes first, then dirty buckets in batches. */
  async refreshOnce(signal?: AbortSignal, opts: { settleMs?: number } = {}): Promise<RefreshResult> {
    const settleMs = opts.settleMs ?? this.settleMs;
    const result: RefreshResult = { buckets: 0, nodes: 0, capChanges: 0, more: false, logged: 0 };
    const caps = await loadRollupCaps(this.db.pool);
    for (const [nodeId, cap] of caps) {
      const now = capSecondsOf(this.nodes, nodeId);
      if (now !== cap) {
        await withTransaction(this.db.pool, (c) => markNodeForCapChange(c, nodeId, cap, now));
        result.capChanges++;
        this.logger.info({ nodeId, oldCapSeconds: cap, capSeconds: now }, 'telemetry interval changed: rollups of the node marked for recomputation');
      }
    }
    const touched = new Set<string>();
    for (let batch = 0; batch < this.maxBatches; batch++) {
      if (signal?.aborted) break;
      // Buckets logged by direct writes become marks first (they settle from now on, as marks do).
      result.logged += await expandInvalidationLog(this.db.pool);
      const marks = await loadDirtyMarks(this.db.pool, this.batchSize, settleMs);
      if (marks.length === 0) break;
      const byNode = new Map<string, DirtyMark[]>();
      for (const m of marks) {
        let list = byNode.get(m.nodeId);
        if (!list) byNode.set(m.nodeId, (list = []));
        list.push(m);
      }
      // Nodes are independent (each its own transaction): `concurrency` at a time, so one node's
      // computation in this process overlaps another's reads and writes in the database.
      const queue = [...byNode];
      const worker = async () => {
        for (let next = queue.shift(); next && !signal?.aborted; next = queue.shift()) {
          const [nodeId, list] = next;
          try {
            await this.refreshNode(nodeId, list);
          } catch (err) {
            // The others finish the node they are on and stop; the run fails as before.
            queue.length = 0;
            throw err;
          }
          touched.add(nodeId);
          result.buckets += list.length;
        }
      };
      const outcomes = await Promise.allSettled(Array.from({ length: Math.min(this.concurrency, queue.length) }, worker));
      for (const o of outcomes) if (o.status === 'rejected') throw o.reason;
      result.more = marks.length === this.batchSize;
      if (!result.more) break;
    }
    result.nodes = touched.size;
    return result;
  }

  private async refreshNode(nodeId: string, marks: DirtyMark[]): Promise<void> {
    const capSeconds = capSecondsOf(this.nodes, nodeId);
    const capMs = capSeconds * 1000;
    const periods = marks.map((m) => ({ start: m.bucketStart, end: m.bucketStart + TIER_MS['15m'] }));
    const ranges = mergeRanges(periods.map((p) => ({ lo: p.start - capMs, hi: p.end })), 0);
    const readings = await loadReadings(this.db.pool, nodeId, NUMERIC_FIELDS, ranges);
    const partials = accumulate(readings, periods, capMs, 0);
    const rows: BucketRow[] = [];
    partials.forEach((part, i) => {
      part.fields.forEach((agg, f) => {
        if (agg.n > 0 || agg.held > 0) rows.push({ field: NUMERIC_FIELDS[f].code, bucketStart: periods[i].start, agg, extras: f === 0 ? part.extras : null });
      });
    });
    await withTransaction(this.db.pool, async (c) => {
      const { rows: st } = await c.query<{ cap_seconds: number }>('SELECT cap_seconds FROM telemetry_rollup_state WHERE node_id = $1 FOR UPDATE', [nodeId]);
      // The interval changed since the run began: every bucket of the node must be redone.
      if (st[0] && st[0].cap_seconds !== capSeconds) await markNodeForCapChange(c, nodeId, st[0].cap_seconds, capSeconds);
      await writeRefreshedBuckets(c, nodeId, marks, rows, capSeconds);
    });
  }
}
