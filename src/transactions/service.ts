import { randomUUID } from 'node:crypto';
import { Counter, Histogram } from 'prom-client';
import type { Logger } from 'pino';
import type { PubSub } from '../cache/types.js';
import type { Db, Queryable } from '../db/pool.js';
import { withTransaction } from '../db/pool.js';
import { badRequest, conflict, notFound, type AppError, type ErrorDetail } from '../http/errors.js';
import { parseBodyTime } from '../http/time.js';
import type { Metrics } from '../metrics/metrics.js';
import type { NodeRegistry } from '../metadata/registry.js';
import {
  GENESIS_HASH,
  recordHash,
  requestHash,
  type HashedFields,
  type JsonValue,
  type TransactionRecord,
  type TransactionStatus,
  type TransactionType,
} from './canonical.js';
import { MerkleAccumulator, inclusionProof, leafHash, type ProofStep } from './merkle.js';
import * as store from './store.js';
import type { Anchor, Checkpoint } from './store.js';

/** Pub/sub channel announcing each committed record: JSON `{ nodeId, type, timestamp }` (timestamp RFC 3339 UTC). */
export const TRANSACTIONS_APPENDED_CHANNEL = 'transactions.appended';

/** Largest `details` object, in bytes of its JSON form. */
export const MAX_DETAILS_BYTES = 16 * 1024;
/** Deepest nesting of `details` (the object itself is depth 1). */
export const MAX_DETAILS_DEPTH = 32;
/** Tolerance of the amount rule, EUR. */
export const AMOUNT_TOLERANCE_EUR = 0.01;
/** Earliest and latest accepted event times (epoch ms): 1970-01-01 to 9999-12-31, so the canonical time is always 24 characters. */
export const MIN_TIMESTAMP_MS = 0;
export const MAX_TIMESTAMP_MS = Date.UTC(9999, 11, 31, 23, 59, 59, 999);

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A record to append, as the API receives it (already shape-checked by the route schema). */
export interface AppendInput {
  transactionId?: string;
  nodeId: string;
  type: TransactionType;
  /** RFC 3339 with offset, or epoch milliseconds */
  timestamp: string | number;
  market?: string;
  energyKwh?: number;
  powerKw?: number;
  priceEurMwh?: number;
  amountEur?: number;
  status: TransactionStatus;
  /** `id` of an earlier record of the same node, or its `transactionId` */
  relatesTo?: string;
  details?: { [key: string]: JsonValue };
}

/** Normalised request: what "the same body" means for idempotent retries (the hashed fields the log assigns left out). */
type NormalisedInput = Omit<HashedFields, 'sequence' | 'id' | 'recordedAt'>;

export interface AppendResult {
  record: TransactionRecord;
  /** false when this was a retry of an existing transactionId with the same body */
  created: boolean;
}

export interface VerifyResult {
  ok: boolean;
  /** records whose hash and link were checked and found intact */
  checked: number;
  fromSequence: number;
  toSequence: number;
  /** present when the range starts right after the retention checkpoint */
  checkpoint?: { sequence: number; hash: string };
  /** anchors wholly inside the range whose Merkle root was recomputed */
  anchorsChecked: number;
  firstBrokenSequence?: number;
  reason?: string;
}

export interface Proof {
  record: TransactionRecord;
  proof: {
    /** SHA-256(0x00 ‖ record hash bytes), hex */
    leafHash: string;
    /** 0-based position of the record in the anchor's batch (sequence − fromSequence) */
    leafIndex: number;
    leafCount: number;
    /** from the leaf up to the root */
    siblings: ProofStep[];
  };
  anchor: Anchor;
  algorithm: { recordHash: string; leaf: string; node: string; oddLeaf: string; canonicalJson: string };
}

interface Pending {
  input: NormalisedInput;
  requestHash: string;
  resolve: (r: AppendResult) => void;
  reject: (err: unknown) => void;
}

export interface TransactionsServiceDeps {
  db: Db;
  pubsub: PubSub;
  nodes: NodeRegistry;
  metrics: Metrics;
  logger: Logger;
  unknownNodes: 'reject' | 'accept';
  retentionDays: number;
  /** Most appends committed in one database transaction. */
  maxGroupSize?: number;
  /** Optimistic tries before a group is committed under the head row lock (0: always locked). */
  optimisticAttempts?: number;
}

const VERIFY_CHUNK = 5000;
const ALGORITHM = {
  recordHash: 'hex(SHA-256(utf8(prevHash + canonicalJson(record without prevHash and hash))))',
  leaf: 'SHA-256(0x00 || 32 bytes of the record hash)',
  node: 'SHA-256(0x01 || left || right)',
  oddLeaf: 'an odd last node of a level is promoted unchanged to the next level (RFC 6962 tree)',
  canonicalJson: 'RFC 8785 (JCS): keys sorted, no whitespace, ECMAScript number form; all 15 hashed fields present, absent ones null; times RFC 3339 UTC with milliseconds',
};

/**
 * Rules of the transaction log. Appends go through one group writer per instance: requests
 * that arrive while a group is being committed wait and are committed together in the next
 * one, under the chain-head row lock that also serialises other instances.
 */
export class TransactionsService {
  private queue: Pending[] = [];
  private flushing: Promise<void> | undefined;
  private readonly maxGroup: number;
  private readonly appended: Counter<'outcome'>;
  private readonly groupSize: Histogram;
  private readonly lockedFallbacks: Counter;
  /** The chain head as this instance last wrote or read it; undefined when it must be re-read. */
  private head: store.ChainHead | undefined;

  constructor(private readonly deps: TransactionsServiceDeps) {
    this.maxGroup = deps.maxGroupSize ?? 500;
    this.appended = new Counter({ name: 'transactions_appends_total', help: 'Append requests by outcome (created, duplicate, conflict, invalid)', labelNames: ['outcome'], registers: [deps.metrics.registry] });
    this.lockedFallbacks = new Counter({ name: 'transactions_append_locked_fallbacks_total', help: 'Append groups that lost the optimistic race repeatedly and were committed under the head row lock', registers: [deps.metrics.registry] });
    this.groupSize = new Histogram({ name: 'transactions_append_group_size', help: 'Records committed per database transaction by the group writer', buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], registers: [deps.metrics.registry] });
  }

  // ---------------------------------------------------------------- append

  async append(input: AppendInput): Promise<AppendResult> {
    const n = this.validate(input);
    await this.checkNode(n.nodeId);
    const rh = requestHash(n);
    return new Promise<AppendResult>((resolve, reject) => {
      this.queue.push({ input: n, requestHash: rh, resolve, reject });
      this.kick();
    });
  }

  /** Waits for appends already queued to be committed (used at shutdown). */
  async drain(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  private kick(): void {
    if (this.flushing) return;
    this.flushing = (async () => {
      while (this.queue.length > 0) {
        const group = this.queue.splice(0, this.maxGroup);
        await this.commitGroup(group);
      }
    })().finally(() => {
      this.flushing = undefined;
      if (this.queue.length > 0) this.kick();
    });
  }

  /**
   * Commits one group. The usual path is optimistic and costs one round trip (two when the group
   * carries idempotency keys or references): the group is chained onto the head this instance
   * last saw, and written by a single autocommit statement that moves the head only if it is
   * still that one (the head row's lock serialises writers of all instances). If another
   * instance moved the head meanwhile nothing is written, the head is re-read and the group
   * re-planned. After a few lost races the group is committed under `SELECT … FOR UPDATE` of the
   * head instead, which always makes progress.
   */
  private async commitGroup(group: Pending[]): Promise<void> {
    let plan: GroupPlan | undefined;
    try {
      plan = await this.deps.metrics.timeStore('transactions', 'append_group', async () => {
        const pool = this.deps.db.pool;
        for (let attempt = 0; attempt < (this.deps.optimisticAttempts ?? OPTIMISTIC_ATTEMPTS); attempt++) {
          const head = this.head ?? (this.head = await store.readHead(pool));
          const p = planGroup(group, head, await lookup(pool, group), Date.now());
          if (p.rows.length === 0) return p;
          if (await store.appendIfHead(pool, head, p.rows, p.newHead)) {
            this.head = p.newHead;
            return p;
          }
          this.head = undefined;
        }
        this.lockedFallbacks.inc();
        return withTransaction(pool, async (client) => {
          const head = await store.lockHead(client);
          const p = planGroup(group, head, await lookup(client, group), head.now);
          if (p.rows.length > 0 && !(await store.appendIfHead(client, head, p.rows, p.newHead))) throw new Error('chain head moved while locked');
          this.head = p.rows.length > 0 ? p.newHead : head;
          return p;
        });
      });
    } catch (err) {
      // Whether the last write landed is unknown: re-read the head next time.
      this.head = undefined;
      for (const p of group) p.reject(err);
      return;
    }
    this.groupSize.observe(plan.rows.length);
    group.forEach((p, i) => {
      const o = plan.outcomes[i];
      if (o.kind === 'error') {
        this.appended.inc({ outcome: o.error.statusCode === 409 ? 'conflict' : 'invalid' });
        p.reject(o.error);
      } else {
        this.appended.inc({ outcome: o.kind });
        p.resolve({ record: o.record, created: o.kind === 'created' });
      }
    });
    for (const { record: r } of plan.rows) {
      this.deps.pubsub
        .publish(TRANSACTIONS_APPENDED_CHANNEL, JSON.stringify({ nodeId: r.nodeId, type: r.type, timestamp: r.timestamp }))
        .catch((err: unknown) => this.deps.logger.warn({ err }, 'transactions.appended publish failed'));
    }
  }

  /** Strict checks beyond the route schema; every problem is listed. */
  validate(input: AppendInput): NormalisedInput {
    const problems: ErrorDetail[] = [];
    const ts = parseBodyTime(input.timestamp);
    if (ts === undefined) problems.push({ path: '/timestamp', message: 'must be an RFC 3339 time with offset or epoch milliseconds' });
    else if (ts < MIN_TIMESTAMP_MS || ts > MAX_TIMESTAMP_MS) problems.push({ path: '/timestamp', message: 'must be between 1970-01-01 and 9999-12-31' });
    for (const f of ['energyKwh', 'powerKw', 'priceEurMwh', 'amountEur'] as const) {
      const v = input[f];
      if (v !== undefined && !Number.isFinite(v)) problems.push({ path: `/${f}`, message: 'must be a finite number' });
    }
    for (const f of ['transactionId', 'market', 'relatesTo'] as const) {
      const v = input[f];
      if (v !== undefined && !isWellFormed(v)) problems.push({ path: `/${f}`, message: 'must be well-formed Unicode' });
    }
    const { energyKwh: e, priceEurMwh: p, amountEur: a } = input;
    if (e !== undefined && p !== undefined && a !== undefined && Number.isFinite(e) && Number.isFinite(p) && Number.isFinite(a)) {
      const expected = (e * p) / 1000;
      // A cent, plus float noise relative to the size of the amounts.
      if (Math.abs(a - expected) > AMOUNT_TOLERANCE_EUR + 1e-9 * Math.max(1, Math.abs(expected))) {
        problems.push({ path: '/amountEur', message: `must equal energyKwh × priceEurMwh / 1000 = ${round2(expected)} EUR within ${AMOUNT_TOLERANCE_EUR} EUR` });
      }
    }
    if (input.details !== undefined) {
      const d = input.details;
      if (d === null || typeof d !== 'object' || Array.isArray(d)) problems.push({ path: '/details', message: 'must be an object' });
      else {
        checkJson(d, '/details', 1, problems);
        const bytes = Buffer.byteLength(JSON.stringify(d), 'utf8');
        if (bytes > MAX_DETAILS_BYTES) problems.push({ path: '/details', message: `is ${bytes} bytes; at most ${MAX_DETAILS_BYTES} bytes (16 KiB) of JSON` });
        const currency = (d as Record<string, unknown>).currency;
        if (currency !== undefined && currency !== 'EUR') problems.push({ path: '/details/currency', message: 'amounts are in EUR (the fields are named so); a currency, when given, must be "EUR"' });
      }
    }
    if (problems.length > 0) {
      const first = problems[0];
      throw badRequest(`invalid transaction: ${first.path} ${first.message}${problems.length > 1 ? ` (and ${problems.length - 1} more)` : ''}`, problems, 'VALIDATION_ERROR');
    }
    return {
      transactionId: input.transactionId ?? null,
      nodeId: input.nodeId,
      type: input.type,
      timestamp: new Date(ts as number).toISOString(),
      market: input.market ?? null,
      energyKwh: normNumber(input.energyKwh),
      powerKw: normNumber(input.powerKw),
      priceEurMwh: normNumber(input.priceEurMwh),
      amountEur: normNumber(input.amountEur),
      status: input.status,
      relatesTo: input.relatesTo ?? null,
      // Round-tripped through JSON so the hashed value is exactly what jsonb gives back.
      details: input.details === undefined ? null : (JSON.parse(JSON.stringify(input.details)) as { [key: string]: JsonValue }),
    };
  }

  private async checkNode(nodeId: string): Promise<void> {
    if (this.deps.unknownNodes === 'accept' || this.deps.nodes.has(nodeId)) return;
    // The registry may not have heard of a node created a moment ago on another instance.
    await this.deps.nodes.reloadNode(nodeId);
    if (this.deps.nodes.has(nodeId)) return;
    throw badRequest(`unknown node "${nodeId}": create its metadata first`, [{ path: '/nodeId', message: 'unknown node' }], 'UNKNOWN_NODE');
  }

  // ---------------------------------------------------------------- queries

  async list(f: { nodeId: string; type?: TransactionType; from?: number; to?: number; limit: number; after?: [number, number] }): Promise<TransactionRecord[]> {
    if (f.from !== undefined && f.to !== undefined && f.from >= f.to) {
      throw badRequest('from must be before to (the range is half-open [from, to))', [{ path: '/from', message: 'must be before to' }], 'INVALID_RANGE');
    }
    const rows = await this.deps.metrics.timeStore('transactions', 'list', () => store.listByNode(this.deps.db.readPool, f));
    if (rows.length === 0 && !f.after && !this.deps.nodes.has(f.nodeId)) {
      const any = await store.nodeHasRecords(this.deps.db.readPool, f.nodeId);
      if (!any) {
        await this.deps.nodes.reloadNode(f.nodeId);
        if (!this.deps.nodes.has(f.nodeId)) throw notFound(`unknown node "${f.nodeId}"`, 'NODE_NOT_FOUND');
      }
    }
    return rows;
  }

  async get(id: string): Promise<TransactionRecord | undefined> {
    return this.deps.metrics.timeStore('transactions', 'get', () => store.getById(this.deps.db.readPool, id));
  }

  /**
   * Recomputes the chain over [fromSequence, toSequence] (defaults: the first retained record,
   * the head), streaming in chunks. The start link is the genesis hash for sequence 1, the
   * checkpoint's hash right after a pruned prefix, else the stored hash of the record before.
   */
  async verify(opts: { fromSequence?: number; toSequence?: number } = {}): Promise<VerifyResult> {
    const before = await store.getCheckpoint(this.deps.db.pool);
    const result = await this.verifyOnce(opts);
    // Retention pruning under our feet looks like missing records: if the checkpoint moved, check again.
    if (!result.ok && (await store.getCheckpoint(this.deps.db.pool))?.lastSequence !== before?.lastSequence) return this.verifyOnce(opts);
    return result;
  }

  private async verifyOnce(opts: { fromSequence?: number; toSequence?: number }): Promise<VerifyResult> {
    const q = this.deps.db.pool;
    return this.deps.metrics.timeStore('transactions', 'verify', async () => {
      const head = await store.readHead(q);
      const checkpoint = await store.getCheckpoint(q);
      const firstRetained = (checkpoint?.lastSequence ?? 0) + 1;
      if (opts.fromSequence !== undefined && opts.toSequence !== undefined && opts.fromSequence > opts.toSequence) {
        throw badRequest('fromSequence must not exceed toSequence', [{ path: '/fromSequence', message: 'must be ≤ toSequence' }], 'INVALID_RANGE');
      }
      const from = Math.max(opts.fromSequence ?? firstRetained, firstRetained);
      const to = Math.min(opts.toSequence ?? head.lastSequence, head.lastSequence);
      const base: VerifyResult = { ok: true, checked: 0, fromSequence: from, toSequence: to, anchorsChecked: 0 };
      if (from > to) {
        // Nothing of the range asked for is in the log: say so, rather than "ok" over no records.
        // (With no bounds given, an empty log is simply intact.)
        if (opts.fromSequence === undefined && opts.toSequence === undefined) return base;
        const held = firstRetained <= head.lastSequence ? `${firstRetained}–${head.lastSequence}` : 'none';
        const path = opts.toSequence !== undefined && opts.toSequence < firstRetained ? '/toSequence' : '/fromSequence';
        const why = path === '/toSequence' ? `records up to ${firstRetained - 1} were pruned by retention` : `the log ends at ${head.lastSequence}`;
        throw badRequest(`no record of the range is in the log (${why}; sequences held: ${held})`, [{ path, message: why }], 'INVALID_RANGE');
      }

      let expectedPrev: string;
      if (from === 1) expectedPrev = GENESIS_HASH;
      else if (checkpoint && from === checkpoint.lastSequence + 1) {
        expectedPrev = checkpoint.lastHash;
        base.checkpoint = { sequence: checkpoint.lastSequence, hash: checkpoint.lastHash };
      } else {
        const before = await store.readHashes(q, from - 2, from - 1, 1);
        if (!before[0]) return { ...base, ok: false, firstBrokenSequence: from - 1, reason: `record ${from - 1} (the link into the range) is missing` };
        expectedPrev = before[0].hash;
      }

      const anchors = await store.anchorsWithin(q, from, to);
      let ai = 0;
      let acc: MerkleAccumulator | undefined;
      let checked = 0;
      let expectedSeq = from;
      const broken = (sequence: number, reason: string): VerifyResult => ({ ...base, ok: false, checked, firstBrokenSequence: sequence, reason });
      // The next chunk is fetched while this one is hashed.
      let pending = store.readChunk(q, from - 1, to, VERIFY_CHUNK);
      for (let after = from - 1; after < to; ) {
        const chunk = await pending;
        if (chunk.length === 0) return broken(expectedSeq, `record ${expectedSeq} is missing`);
        const last = chunk[chunk.length - 1].sequence;
        pending = last < to ? store.readChunk(q, last, to, VERIFY_CHUNK) : Promise.resolve([]);
        // A failure below returns early; the prefetch must not become an unhandled rejection.
        pending.catch(() => undefined);
        for (const r of chunk) {
          if (r.sequence !== expectedSeq) return broken(expectedSeq, `record ${expectedSeq} is missing (next stored is ${r.sequence})`);
          if (r.prevHash !== expectedPrev) return broken(r.sequence, 'prevHash does not match the hash of the record before');
          let recomputed: string;
          try {
            recomputed = recordHash(r.prevHash, r);
          } catch {
            return broken(r.sequence, 'stored fields have no canonical form');
          }
          if (recomputed !== r.hash) return broken(r.sequence, 'stored hash does not match the recomputed hash of the record');
          const anchor = anchors[ai];
          if (anchor && r.sequence === anchor.fromSequence) acc = new MerkleAccumulator();
          if (acc) acc.addRecordHash(r.hash);
          if (anchor && acc && r.sequence === anchor.toSequence) {
            // Intact before it: the records ahead of the anchor's first (the tree cannot say which leaf).
            if (acc.root() !== anchor.merkleRoot) {
              const reason = `Merkle root of anchor ${anchor.anchorId} (sequences ${anchor.fromSequence}–${anchor.toSequence}) does not match the records`;
              return { ...broken(anchor.fromSequence, reason), checked: anchor.fromSequence - from };
            }
            acc = undefined;
            ai++;
            base.anchorsChecked++;
          }
          expectedPrev = r.hash;
          expectedSeq++;
          checked++;
        }
        after = last;
      }
      if (to === head.lastSequence && expectedPrev !== head.lastHash) {
        return broken(to, 'the chain head does not match the last record');
      }
      return { ...base, checked };
    });
  }

  // ---------------------------------------------------------------- anchoring

  /**
   * Closes the batch of records since the last anchor (up to `toSequence`, default the head)
   * into a Merkle tree. 409 NOTHING_TO_ANCHOR when no record is new.
   */
  async createAnchor(opts: { toSequence?: number } = {}): Promise<Anchor> {
    return this.deps.metrics.timeStore('transactions', 'anchor', () =>
      withTransaction(this.deps.db.pool, async (client) => {
        await store.lockAnchoring(client);
        const from = (await store.lastAnchoredSequence(client)) + 1;
        const head = await store.readHead(client);
        const to = opts.toSequence ?? head.lastSequence;
        if (head.lastSequence < from) throw conflict(`nothing to anchor: every record up to sequence ${head.lastSequence} is already anchored`, 'NOTHING_TO_ANCHOR');
        if (to < from || to > head.lastSequence) {
          throw badRequest(`toSequence must be between ${from} and ${head.lastSequence}`, [{ path: '/toSequence', message: 'out of range' }], 'INVALID_RANGE');
        }
        const acc = new MerkleAccumulator();
        let expected = from;
        for (let after = from - 1; after < to; ) {
          const chunk = await store.readHashes(client, after, to, VERIFY_CHUNK * 4);
          for (const r of chunk) {
            if (r.sequence !== expected) throw new Error(`record ${expected} missing while anchoring`);
            acc.addRecordHash(r.hash);
            expected++;
          }
          if (chunk.length === 0) throw new Error(`record ${expected} missing while anchoring`);
          after = chunk[chunk.length - 1].sequence;
        }
        return store.insertAnchor(client, { anchorId: randomUUID(), fromSequence: from, toSequence: to, merkleRoot: acc.root() });
      }),
    );
  }

  /** Records where an anchor's root was put on chain; once. Same values again is a no-op, different ones 409. */
  async recordAnchorChain(anchorId: string, c: { network: string; txHash: string; blockNumber: number }): Promise<Anchor> {
    return withTransaction(this.deps.db.pool, async (client) => {
      const a = await store.getAnchor(client, anchorId, true);
      if (!a) throw notFound(`no anchor ${anchorId}`, 'ANCHOR_NOT_FOUND');
      if (a.network !== null) {
        if (a.network === c.network && a.txHash === c.txHash && a.blockNumber === c.blockNumber) return a;
        throw conflict(`anchor ${anchorId} was already recorded on ${a.network} in transaction ${a.txHash}`, 'ANCHOR_ALREADY_RECORDED');
      }
      return store.recordAnchorChain(client, anchorId, c);
    });
  }

  async getAnchor(anchorId: string): Promise<Anchor | undefined> {
    return store.getAnchor(this.deps.db.readPool, anchorId);
  }

  async listAnchors(limit: number, beforeFromSequence?: number): Promise<Anchor[]> {
    return store.listAnchors(this.deps.db.readPool, limit, beforeFromSequence);
  }

  /** The record, its Merkle inclusion proof and its anchor. 404 when the record is unknown or pruned, or not anchored yet. */
  async proof(id: string): Promise<Proof> {
    const q = this.deps.db.pool;
    return this.deps.metrics.timeStore('transactions', 'proof', async () => {
      const record = await store.getById(q, id);
      if (!record) throw notFound(`no transaction ${id} (unknown, or pruned by retention)`, 'TRANSACTION_NOT_FOUND');
      const anchor = await store.anchorCovering(q, record.sequence);
      if (!anchor) throw notFound(`transaction ${id} (sequence ${record.sequence}) is not anchored yet; close a batch with POST /api/transactions/anchors`, 'NOT_ANCHORED');
      const hashes: string[] = [];
      for (let after = anchor.fromSequence - 1; after < anchor.toSequence; ) {
        const chunk = await store.readHashes(q, after, anchor.toSequence, VERIFY_CHUNK * 4);
        if (chunk.length === 0) break;
        for (const r of chunk) hashes.push(r.hash);
        after = chunk[chunk.length - 1].sequence;
      }
      if (hashes.length !== anchor.leafCount) {
        // Part of the batch was pruned: the tree cannot be rebuilt, so no proof can be given.
        throw notFound(`the proof of transaction ${id} is no longer available: part of its anchored batch was pruned`, 'PROOF_NOT_AVAILABLE');
      }
      const leafIndex = record.sequence - anchor.fromSequence;
      return {
        record,
        proof: { leafHash: leafHash(record.hash).toString('hex'), leafIndex, leafCount: anchor.leafCount, siblings: inclusionProof(hashes, leafIndex) },
        anchor,
        algorithm: ALGORITHM,
      };
    });
  }

  // ---------------------------------------------------------------- retention

  /**
   * Prunes records recorded before `cutoff` (epoch ms) that are anchored, as a prefix of the
   * log, in chunks, moving the checkpoint with each chunk. Returns how many were deleted.
   */
  async prune(cutoff: number, signal?: AbortSignal): Promise<{ pruned: number; checkpointSequence: number | undefined }> {
    const pool = this.deps.db.pool;
    const upTo = await store.prunableUpTo(pool, cutoff);
    let pruned = 0;
    let cp = (await store.getCheckpoint(pool))?.lastSequence ?? 0;
    if (upTo === undefined || upTo <= cp) return { pruned, checkpointSequence: cp || undefined };
    while (cp < upTo && !signal?.aborted) {
      const step = Math.min(upTo, cp + 10_000);
      pruned += await this.deps.metrics.timeStore('transactions', 'prune', () => withTransaction(pool, (c) => store.pruneRange(c, cp, step)));
      cp = step;
    }
    return { pruned, checkpointSequence: cp };
  }

  async runRetention(signal?: AbortSignal): Promise<Record<string, unknown>> {
    const cutoff = Date.now() - this.deps.retentionDays * 86_400_000;
    const r = await this.prune(cutoff, signal);
    return { pruned: r.pruned, checkpointSequence: r.checkpointSequence ?? null, cutoff: new Date(cutoff).toISOString() };
  }

  async checkpoint(): Promise<Checkpoint | undefined> {
    return store.getCheckpoint(this.deps.db.readPool);
  }

  async headInfo(): Promise<{ lastSequence: number; lastAnchoredSequence: number }> {
    const head = await store.readHead(this.deps.db.readPool);
    return { lastSequence: head.lastSequence, lastAnchoredSequence: await store.lastAnchoredSequence(this.deps.db.readPool) };
  }
}

const OPTIMISTIC_ATTEMPTS = 4;

type Outcome = { kind: 'created' | 'duplicate'; record: TransactionRecord } | { kind: 'error'; error: AppError };

interface GroupPlan {
  outcomes: Outcome[];
  rows: store.NewRow[];
  newHead: store.ChainHead;
}

interface Lookups {
  existing: Map<string, store.StoredRecord>;
  refById: Map<string, store.RefRow>;
  refByKey: Map<string, store.RefRow>;
}

/** Records a group's idempotency keys and references name (nothing to ask when there are none). */
async function lookup(q: Queryable, group: Pending[]): Promise<Lookups> {
  const keys = [...new Set(group.map((p) => p.input.transactionId).filter((k): k is string => k !== null))];
  const refs = [...new Set(group.map((p) => p.input.relatesTo).filter((r): r is string => r !== null))];
  const found = await store.findKeysAndRefs(q, keys, refs.filter((r) => UUID.test(r)).map((r) => r.toLowerCase()), refs);
  const existing = new Map<string, store.StoredRecord>();
  for (const s of found.byKey) existing.set(s.record.transactionId as string, s);
  return {
    existing,
    refById: new Map(found.refs.map((r) => [r.id, r])),
    refByKey: new Map(found.refs.filter((r) => r.transaction_id !== null).map((r) => [r.transaction_id as string, r])),
  };
}

/** Decides each member's fate and chains the new records onto `head`. Pure: no I/O. */
function planGroup(group: Pending[], head: store.ChainHead, found: Lookups, nowMs: number): GroupPlan {
  const { existing, refById, refByKey } = found;
  let seq = head.lastSequence;
  let prev = head.lastHash;
  // recordedAt never goes backwards along the chain, whatever the clocks of the instances.
  const recordedAt = Math.max(nowMs, head.lastRecordedAt ?? 0);
  const rows: store.NewRow[] = [];
  const outcomes: Outcome[] = [];
  for (const p of group) {
    const key = p.input.transactionId;
    if (key !== null) {
      const prior = existing.get(key);
      if (prior) {
        if (prior.requestHash === p.requestHash) outcomes.push({ kind: 'duplicate', record: prior.record });
        else outcomes.push({ kind: 'error', error: conflict(`transactionId "${key}" was already used with a different body (record ${prior.record.id}, sequence ${prior.record.sequence})`, 'TRANSACTION_ID_CONFLICT') });
        continue;
      }
    }
    let relatesTo: string | null = null;
    if (p.input.relatesTo !== null) {
      const ref = p.input.relatesTo;
      // The value may be one record's id and another's transactionId (keys are often UUIDs): the
      // record of this node wins; if both are this node's, the id does.
      const byId = UUID.test(ref) ? refById.get(ref.toLowerCase()) : undefined;
      const byKey = refByKey.get(ref);
      const target = [byId, byKey].find((r) => r?.node_id === p.input.nodeId) ?? byId ?? byKey;
      if (!target) {
        outcomes.push({ kind: 'error', error: badRequest(`relatesTo "${ref}" names no record in the log`, [{ path: '/relatesTo', message: 'no such record' }], 'INVALID_RELATES_TO') });
        continue;
      }
      if (target.node_id !== p.input.nodeId) {
        outcomes.push({ kind: 'error', error: badRequest(`relatesTo "${ref}" is a record of node ${target.node_id}, not ${p.input.nodeId}`, [{ path: '/relatesTo', message: 'record of another node' }], 'INVALID_RELATES_TO') });
        continue;
      }
      relatesTo = target.id;
    }
    seq += 1;
    const fields = {
      sequence: seq,
      id: randomUUID(),
      transactionId: key,
      nodeId: p.input.nodeId,
      type: p.input.type,
      timestamp: p.input.timestamp,
      market: p.input.market,
      energyKwh: p.input.energyKwh,
      powerKw: p.input.powerKw,
      priceEurMwh: p.input.priceEurMwh,
      amountEur: p.input.amountEur,
      status: p.input.status,
      relatesTo,
      details: p.input.details,
      recordedAt: new Date(recordedAt).toISOString(),
    };
    const hash = recordHash(prev, fields);
    const record: TransactionRecord = { ...fields, prevHash: prev, hash };
    prev = hash;
    rows.push({ record, requestHash: p.requestHash });
    outcomes.push({ kind: 'created', record });
    // Later members of this group may retry this key or relate to this record.
    const ref = { id: record.id, transaction_id: key, node_id: record.nodeId };
    if (key !== null) {
      existing.set(key, { record, requestHash: p.requestHash });
      refByKey.set(key, ref);
    }
    refById.set(record.id, ref);
  }
  return { outcomes, rows, newHead: { lastSequence: seq, lastHash: prev, lastRecordedAt: rows.length > 0 ? recordedAt : head.lastRecordedAt, now: nowMs } };
}

function normNumber(v: number | undefined): number | null {
  if (v === undefined) return null;
  // -0 has no JSON form of its own (it serialises as 0); store what the hash says.
  return Object.is(v, -0) ? 0 : v;
}

function round2(v: number): number {
  return Math.round(v * 100) / 100;
}

/** Values jsonb and the canonical form can both hold exactly: finite numbers, well-formed strings without NUL, bounded depth. */
function checkJson(v: unknown, path: string, depth: number, problems: ErrorDetail[]): void {
  if (problems.length >= 20) return;
  if (depth > MAX_DETAILS_DEPTH) {
    problems.push({ path, message: `nests deeper than ${MAX_DETAILS_DEPTH} levels` });
    return;
  }
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) problems.push({ path, message: 'must be a finite number' });
  } else if (typeof v === 'string') {
    if (!isWellFormed(v) || v.includes('\u0000')) problems.push({ path, message: 'must be well-formed Unicode without NUL characters' });
  } else if (Array.isArray(v)) {
    v.forEach((x, i) => checkJson(x, `${path}/${i}`, depth + 1, problems));
  } else if (v !== null && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      if (!isWellFormed(k) || k.includes('\u0000')) problems.push({ path: `${path}/${escapePointer(k)}`, message: 'key must be well-formed Unicode without NUL characters' });
      checkJson(x, `${path}/${escapePointer(k)}`, depth + 1, problems);
    }
  }
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** A lone surrogate cannot be encoded as UTF-8: PostgreSQL would store U+FFFD and the hash would no longer match. */
function isWellFormed(s: string): boolean {
  return !LONE_SURROGATE.test(s);
}

function escapePointer(k: string): string {
  return k.replace(/~/g, '~0').replace(/\//g, '~1');
}

