import type { Queryable } from '../db/pool.js';
import type { JsonValue, TransactionRecord, TransactionStatus, TransactionType } from './canonical.js';

/** SQL of the transaction log. snake_case stays here; callers see camelCase records. */

export interface TransactionRow {
  sequence: number;
  id: string;
  transaction_id: string | null;
  node_id: string;
  type: TransactionType;
  ts: Date;
  market: string | null;
  energy_kwh: number | null;
  power_kw: number | null;
  price_eur_mwh: number | null;
  amount_eur: number | null;
  status: TransactionStatus;
  relates_to: string | null;
  details: { [key: string]: JsonValue } | null;
  recorded_at: Date;
  prev_hash: string;
  hash: string;
  request_hash: string;
}

export interface StoredRecord {
  record: TransactionRecord;
  requestHash: string;
}

const COLUMNS = `sequence, id, transaction_id, node_id, type, ts, market, energy_kwh, power_kw, price_eur_mwh, amount_eur,
  status, relates_to, details, recorded_at, prev_hash, hash, request_hash`;

export function rowToRecord(r: TransactionRow): TransactionRecord {
  return {
    sequence: r.sequence,
    id: r.id,
    transactionId: r.transaction_id,
    nodeId: r.node_id,
    type: r.type,
    timestamp: r.ts.toISOString(),
    market: r.market,
    energyKwh: r.energy_kwh,
    powerKw: r.power_kw,
    priceEurMwh: r.price_eur_mwh,
    amountEur: r.amount_eur,
    status: r.status,
    relatesTo: r.relates_to,
    details: r.details,
    recordedAt: r.recorded_at.toISOString(),
    prevHash: r.prev_hash,
    hash: r.hash,
  };
}

export interface ChainHead {
  lastSequence: number;
  lastHash: string;
  /** epoch ms, or undefined before the first record */
  lastRecordedAt: number | undefined;
  /** the database clock (epoch ms) when the head was locked */
  now: number;
}

/** Locks the one chain-head row until the transaction ends: every appender of every instance queues here. */
export async function lockHead(q: Queryable): Promise<ChainHead> {
  const { rows } = await q.query<{ last_sequence: number; last_hash: string; last_recorded_at: Date | null; now: Date }>(
    'SELECT last_sequence, last_hash, last_recorded_at, clock_timestamp() AS now FROM transaction_chain_head FOR UPDATE',
  );
  const r = rows[0];
  return { lastSequence: r.last_sequence, lastHash: r.last_hash, lastRecordedAt: r.last_recorded_at?.getTime(), now: r.now.getTime() };
}

export async function readHead(q: Queryable): Promise<ChainHead> {
  const { rows } = await q.query<{ last_sequence: number; last_hash: string; last_recorded_at: Date | null; now: Date }>(
    'SELECT last_sequence, last_hash, last_recorded_at, clock_timestamp() AS now FROM transaction_chain_head',
  );
  const r = rows[0];
  return { lastSequence: r.last_sequence, lastHash: r.last_hash, lastRecordedAt: r.last_recorded_at?.getTime(), now: r.now.getTime() };
}

/**
 * Writes a group of chained records and moves the head, in one statement, only if the head is
 * still `expected`. Returns false (and writes nothing) when another writer moved it first.
 * Outside a transaction the statement commits on its own.
 */
export async function appendIfHead(q: Queryable, expected: ChainHead, rows: NewRow[], next: ChainHead): Promise<boolean> {
  const cols: unknown[][] = Array.from({ length: 18 }, () => []);
  for (const { record: r, requestHash } of rows) {
    const values = [
      r.sequence, r.id, r.transactionId, r.nodeId, r.type, r.timestamp, r.market, r.energyKwh, r.powerKw, r.priceEurMwh,
      r.amountEur, r.status, r.relatesTo, r.details === null ? null : JSON.stringify(r.details), r.recordedAt, r.prevHash, r.hash, requestHash,
    ];
    values.forEach((v, i) => cols[i].push(v));
  }
  const res = await q.query(
    `WITH moved AS (
       UPDATE transaction_chain_head SET last_sequence = $19, last_hash = $20, last_recorded_at = $21
       WHERE last_sequence = $22 AND last_hash = $23
       RETURNING 1
     )
     INSERT INTO transactions (${COLUMNS})
     SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[],
       $8::float8[], $9::float8[], $10::float8[], $11::float8[], $12::text[], $13::uuid[], $14::jsonb[], $15::timestamptz[],
       $16::text[], $17::text[], $18::text[])
     WHERE EXISTS (SELECT 1 FROM moved)`,
    [...cols, next.lastSequence, next.lastHash, new Date(next.lastRecordedAt ?? next.now), expected.lastSequence, expected.lastHash],
  );
  return res.rowCount === rows.length;
}

/** In one query: records holding any of `keys` (idempotency), and records `relatesTo` values may name (by id or by key). */
export async function findKeysAndRefs(q: Queryable, keys: string[], refIds: string[], refKeys: string[]): Promise<{ byKey: StoredRecord[]; refs: RefRow[] }> {
  if (keys.length === 0 && refIds.length === 0 && refKeys.length === 0) return { byKey: [], refs: [] };
  const { rows } = await q.query<TransactionRow>(
    `SELECT ${COLUMNS} FROM transactions
     WHERE transaction_id = ANY($1::text[]) OR id = ANY($2::uuid[]) OR transaction_id = ANY($3::text[])`,
    [keys, refIds, refKeys],
  );
  const wanted = new Set(keys);
  return {
    byKey: rows.filter((r) => r.transaction_id !== null && wanted.has(r.transaction_id)).map((r) => ({ record: rowToRecord(r), requestHash: r.request_hash })),
    refs: rows.map((r) => ({ id: r.id, transaction_id: r.transaction_id, node_id: r.node_id })),
  };
}

export interface RefRow {
  id: string;
  transaction_id: string | null;
  node_id: string;
}

export interface NewRow {
  record: TransactionRecord;
  requestHash: string;
}

export async function getById(q: Queryable, id: string): Promise<TransactionRecord | undefined> {
  const { rows } = await q.query<TransactionRow>(`SELECT ${COLUMNS} FROM transactions WHERE id = $1`, [id]);
  return rows[0] ? rowToRecord(rows[0]) : undefined;
}

export interface ListFilter {
  nodeId: string;
  type?: TransactionType;
  /** epoch ms, inclusive */
  from?: number;
  /** epoch ms, exclusive */
  to?: number;
  limit: number;
  /** keyset position: the last (ts ms, sequence) served */
  after?: [number, number];
}

/** The node's records newest first by (timestamp, sequence); `limit + 1` rows so the caller knows whether more follow. */
export async function listByNode(q: Queryable, f: ListFilter): Promise<TransactionRecord[]> {
  const where = ['node_id = $1'];
  const params: unknown[] = [f.nodeId];
  if (f.type) {
    params.push(f.type);
    where.push(`type = $${params.length}`);
  }
  if (f.from !== undefined) {
    params.push(new Date(f.from));
    where.push(`ts >= $${params.length}`);
  }
  if (f.to !== undefined) {
    params.push(new Date(f.to));
    where.push(`ts < $${params.length}`);
  }
  if (f.after) {
    params.push(new Date(f.after[0]), f.after[1]);
    where.push(`(ts, sequence) < ($${params.length - 1}, $${params.length})`);
  }
  params.push(f.limit + 1);
  const { rows } = await q.query<TransactionRow>(
    `SELECT ${COLUMNS} FROM transactions WHERE ${where.join(' AND ')} ORDER BY ts DESC, sequence DESC LIMIT $${params.length}`,
    params,
  );
  return rows.map(rowToRecord);
}

export async function nodeHasRecords(q: Queryable, nodeId: string): Promise<boolean> {
  const { rows } = await q.query('SELECT 1 FROM transactions WHERE node_id = $1 LIMIT 1', [nodeId]);
  return rows.length > 0;
}

/** Records with sequence in (afterSequence, toSequence], in order, at most `limit`. */
export async function readChunk(q: Queryable, afterSequence: number, toSequence: number, limit: number): Promise<TransactionRecord[]> {
  const { rows } = await q.query<TransactionRow>(
    `SELECT ${COLUMNS} FROM transactions WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence LIMIT $3`,
    [afterSequence, toSequence, limit],
  );
  return rows.map(rowToRecord);
}

/** Stored hashes with sequence in (afterSequence, toSequence], in order, at most `limit`. */
export async function readHashes(q: Queryable, afterSequence: number, toSequence: number, limit: number): Promise<{ sequence: number; hash: string }[]> {
  const { rows } = await q.query<{ sequence: number; hash: string }>(
    'SELECT sequence, hash FROM transactions WHERE sequence > $1 AND sequence <= $2 ORDER BY sequence LIMIT $3',
    [afterSequence, toSequence, limit],
  );
  return rows;
}

export async function minSequence(q: Queryable): Promise<number | undefined> {
  const { rows } = await q.query<{ s: number | null }>('SELECT min(sequence) AS s FROM transactions');
  return rows[0].s ?? undefined;
}

export interface Checkpoint {
  lastSequence: number;
  lastHash: string;
  lastRecordedAt: string;
  prunedAt: string;
  prunedTotal: number;
}

export async function getCheckpoint(q: Queryable): Promise<Checkpoint | undefined> {
  const { rows } = await q.query<{ last_sequence: number; last_hash: string; last_recorded_at: Date; pruned_at: Date; pruned_total: number }>(
    'SELECT last_sequence, last_hash, last_recorded_at, pruned_at, pruned_total FROM transaction_checkpoint',
  );
  const r = rows[0];
  return r && { lastSequence: r.last_sequence, lastHash: r.last_hash, lastRecordedAt: r.last_recorded_at.toISOString(), prunedAt: r.pruned_at.toISOString(), prunedTotal: r.pruned_total };
}

/**
 * Deletes records with sequence in (afterSequence, upTo] and moves the checkpoint to `upTo`.
 * Must run inside a transaction: the trigger lets the DELETE through only with the
 * transaction-local setting made here.
 */
export async function pruneRange(q: Queryable, afterSequence: number, upTo: number): Promise<number> {
  const last = await q.query<{ hash: string; recorded_at: Date }>('SELECT hash, recorded_at FROM transactions WHERE sequence = $1', [upTo]);
  if (!last.rows[0]) throw new Error(`record ${upTo} missing while pruning`);
  await q.query("SELECT set_config('vpp.transactions_prune', 'on', true)");
  const del = await q.query('DELETE FROM transactions WHERE sequence > $1 AND sequence <= $2', [afterSequence, upTo]);
  await q.query("SELECT set_config('vpp.transactions_prune', 'off', true)");
  await q.query(
    `INSERT INTO transaction_checkpoint (singleton, last_sequence, last_hash, last_recorded_at, pruned_at, pruned_total)
     VALUES (true, $1, $2, $3, now(), $4)
     ON CONFLICT (singleton) DO UPDATE SET last_sequence = EXCLUDED.last_sequence, last_hash = EXCLUDED.last_hash,
       last_recorded_at = EXCLUDED.last_recorded_at, pruned_at = now(), pruned_total = transaction_checkpoint.pruned_total + EXCLUDED.pruned_total`,
    [upTo, last.rows[0].hash, last.rows[0].recorded_at, del.rowCount ?? 0],
  );
  return del.rowCount ?? 0;
}

/**
 * The last sequence retention may prune: the end of the last anchor lying wholly inside the
 * longest prefix of the log whose records were all recorded before `cutoff`. Whole anchors
 * only, so every retained record keeps a complete Merkle batch and thus its proof.
 */
export async function prunableUpTo(q: Queryable, cutoff: number): Promise<number | undefined> {
  const { rows } = await q.query<{ upto: number | null }>(
    `SELECT max(to_sequence) AS upto FROM transaction_anchors
     WHERE to_sequence <= COALESCE((SELECT min(sequence) - 1 FROM transactions WHERE recorded_at >= $1),
                                   (SELECT max(sequence) FROM transactions))`,
    [new Date(cutoff)],
  );
  return rows[0].upto ?? undefined;
}

export interface AnchorRow {
  anchor_id: string;
  from_sequence: number;
  to_sequence: number;
  merkle_root: string;
  created_at: Date;
  network: string | null;
  tx_hash: string | null;
  block_number: number | null;
  chain_recorded_at: Date | null;
}

/** A closed Merkle batch and, once recorded, where its root was put on chain. */
export interface Anchor {
  anchorId: string;
  merkleRoot: string;
  /** first sequence in the batch (inclusive) */
  fromSequence: number;
  /** last sequence in the batch (inclusive) */
  toSequence: number;
  leafCount: number;
  createdAt: string;
  network: string | null;
  txHash: string | null;
  blockNumber: number | null;
  chainRecordedAt: string | null;
}

export function anchorRowToAnchor(r: AnchorRow): Anchor {
  return {
    anchorId: r.anchor_id,
    merkleRoot: r.merkle_root,
    fromSequence: r.from_sequence,
    toSequence: r.to_sequence,
    leafCount: r.to_sequence - r.from_sequence + 1,
    createdAt: r.created_at.toISOString(),
    network: r.network,
    txHash: r.tx_hash,
    blockNumber: r.block_number,
    chainRecordedAt: r.chain_recorded_at?.toISOString() ?? null,
  };
}

const ANCHOR_COLUMNS = 'anchor_id, from_sequence, to_sequence, merkle_root, created_at, network, tx_hash, block_number, chain_recorded_at';

/** Serialises anchor creation across instances for the rest of the transaction. */
export async function lockAnchoring(q: Queryable): Promise<void> {
  await q.query('SELECT pg_advisory_xact_lock(7460400)');
}

export async function lastAnchoredSequence(q: Queryable): Promise<number> {
  const { rows } = await q.query<{ s: number | null }>('SELECT max(to_sequence) AS s FROM transaction_anchors');
  return rows[0].s ?? 0;
}

export async function insertAnchor(q: Queryable, a: { anchorId: string; fromSequence: number; toSequence: number; merkleRoot: string }): Promise<Anchor> {
  const { rows } = await q.query<AnchorRow>(
    `INSERT INTO transaction_anchors (anchor_id, from_sequence, to_sequence, merkle_root) VALUES ($1, $2, $3, $4) RETURNING ${ANCHOR_COLUMNS}`,
    [a.anchorId, a.fromSequence, a.toSequence, a.merkleRoot],
  );
  return anchorRowToAnchor(rows[0]);
}

export async function getAnchor(q: Queryable, anchorId: string, forUpdate = false): Promise<Anchor | undefined> {
  const { rows } = await q.query<AnchorRow>(`SELECT ${ANCHOR_COLUMNS} FROM transaction_anchors WHERE anchor_id = $1${forUpdate ? ' FOR UPDATE' : ''}`, [anchorId]);
  return rows[0] ? anchorRowToAnchor(rows[0]) : undefined;
}

export async function anchorCovering(q: Queryable, sequence: number): Promise<Anchor | undefined> {
  const { rows } = await q.query<AnchorRow>(
    `SELECT ${ANCHOR_COLUMNS} FROM transaction_anchors WHERE from_sequence <= $1 AND to_sequence >= $1`,
    [sequence],
  );
  return rows[0] ? anchorRowToAnchor(rows[0]) : undefined;
}

/** Anchors wholly inside [fromSequence, toSequence], in order. */
export async function anchorsWithin(q: Queryable, fromSequence: number, toSequence: number): Promise<Anchor[]> {
  const { rows } = await q.query<AnchorRow>(
    `SELECT ${ANCHOR_COLUMNS} FROM transaction_anchors WHERE from_sequence >= $1 AND to_sequence <= $2 ORDER BY from_sequence`,
    [fromSequence, toSequence],
  );
  return rows.map(anchorRowToAnchor);
}

/** Newest first; `limit + 1` rows. */
export async function listAnchors(q: Queryable, limit: number, beforeFromSequence?: number): Promise<Anchor[]> {
  const { rows } = await q.query<AnchorRow>(
    `SELECT ${ANCHOR_COLUMNS} FROM transaction_anchors WHERE ($1::bigint IS NULL OR from_sequence < $1) ORDER BY from_sequence DESC LIMIT $2`,
    [beforeFromSequence ?? null, limit + 1],
  );
  return rows.map(anchorRowToAnchor);
}

export async function recordAnchorChain(q: Queryable, anchorId: string, c: { network: string; txHash: string; blockNumber: number }): Promise<Anchor> {
  const { rows } = await q.query<AnchorRow>(
    `UPDATE transaction_anchors SET network = $2, tx_hash = $3, block_number = $4, chain_recorded_at = now()
     WHERE anchor_id = $1 RETURNING ${ANCHOR_COLUMNS}`,
    [anchorId, c.network, c.txHash, c.blockNumber],
  );
  return anchorRowToAnchor(rows[0]);
}
