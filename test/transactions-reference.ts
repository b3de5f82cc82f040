/**
 * An independent implementation of the log's published algorithms (docs/transactions.md), written
 * from the documentation for the tests: it shares no code with src/transactions.
 */
import { createHash } from 'node:crypto';
import pg from 'pg';

const FIELDS = ['sequence', 'id', 'transactionId', 'nodeId', 'type', 'timestamp', 'market', 'energyKwh', 'powerKw', 'priceEurMwh', 'amountEur', 'status', 'relatesTo', 'details', 'recordedAt'];

function refString(s: string): string {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0) as number;
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c < 0x20) out += `\\u${c.toString(16).padStart(4, '0')}`;
    else out += ch;
  }
  return `${out}"`;
}

/** RFC 8785 canonical JSON, hand-written. */
export function refCanonical(v: unknown): string {
  if (v === null) return 'null';
  if (v === true) return 'true';
  if (v === false) return 'false';
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new Error('non-finite');
    return Object.is(v, -0) ? '0' : String(v);
  }
  if (typeof v === 'string') return refString(v);
  if (Array.isArray(v)) return `[${v.map(refCanonical).join(',')}]`;
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${keys.map((k) => `${refString(k)}:${refCanonical(o[k])}`).join(',')}}`;
}

export function sha256hex(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** hash = hex(SHA-256(utf8(prevHash + canonical(hashed fields)))) */
export function refRecordHash(record: Record<string, unknown>, prevHash = record.prevHash as string): string {
  const picked: Record<string, unknown> = {};
  for (const f of FIELDS) picked[f] = record[f] === undefined ? null : record[f];
  return sha256hex(prevHash + refCanonical(picked));
}

function leaf(hashHex: string): Buffer {
  return createHash('sha256').update(Buffer.concat([Buffer.from([0]), Buffer.from(hashHex, 'hex')])).digest();
}
function inner(l: Buffer, r: Buffer): Buffer {
  return createHash('sha256').update(Buffer.concat([Buffer.from([1]), l, r])).digest();
}

/** Level by level, pairing left to right, promoting an odd last node. */
export function refMerkleRoot(recordHashes: string[]): string {
  let level = recordHashes.map(leaf);
  while (level.length > 1) {
    const next: Buffer[] = [];
    for (let i = 0; i < level.length; i += 2) next.push(i + 1 < level.length ? inner(level[i], level[i + 1]) : level[i]);
    level = next;
  }
  return level[0].toString('hex');
}

export function refRootFromProof(recordHash: string, siblings: { position: string; hash: string }[]): string {
  let acc = leaf(recordHash);
  for (const s of siblings) {
    const h = Buffer.from(s.hash, 'hex');
    if (s.position === 'left') acc = inner(h, acc);
    else if (s.position === 'right') acc = inner(acc, h);
    else throw new Error(`bad position ${s.position}`);
  }
  return acc.toString('hex');
}

/** Runs `fn` on a plain client of the test database with the log's guard triggers disabled (tampering, as someone with database access would). */
export async function withTriggersOff<T>(databaseUrl: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: databaseUrl });
  await c.connect();
  try {
    await c.query('BEGIN');
    await c.query('ALTER TABLE transactions DISABLE TRIGGER transactions_append_only');
    const r = await fn(c);
    await c.query('ALTER TABLE transactions ENABLE TRIGGER transactions_append_only');
    await c.query('COMMIT');
    return r;
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    await c.end();
  }
}

export async function sql<T extends pg.QueryResultRow = pg.QueryResultRow>(databaseUrl: string, text: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: databaseUrl });
  await c.connect();
  try {
    return (await c.query<T>(text, params)).rows;
  } finally {
    await c.end();
  }
}

/** Inserts nodes straight into `nodes` (the metadata API is someone else's) and reloads the registry. */
export async function createNodes(databaseUrl: string, nodeIds: string[], reload: () => Promise<void>): Promise<void> {
  for (const id of nodeIds) {
    await sql(databaseUrl, `INSERT INTO nodes (node_id, type, status, capacity_kw, doc) VALUES ($1, 'battery', 'active', 1000, '{}'::jsonb)`, [id]);
  }
  await reload();
}
