import { createHash } from 'node:crypto';

/** prevHash of the first record of the log: 64 zeros. */
export const GENESIS_HASH = '0'.repeat(64);

/** Transaction kinds the log accepts. */
export const TRANSACTION_TYPES = ['dispatch', 'bid', 'settlement', 'adjustment'] as const;
export type TransactionType = (typeof TRANSACTION_TYPES)[number];

/** Lifecycle states a record can report; a change of state is a new record that `relatesTo` the earlier one. */
export const TRANSACTION_STATUSES = ['pending', 'accepted', 'rejected', 'confirmed', 'settled', 'failed'] as const;
export type TransactionStatus = (typeof TRANSACTION_STATUSES)[number];

/** JSON value as stored in `details`. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/**
 * One record of the log exactly as it is hashed (every field present; absent optionals are null).
 * Times are RFC 3339 UTC with milliseconds (`2026-11-27T10:00:00.000Z`).
 */
export interface HashedFields {
  /** Position in the log: 1, 2, 3 ... without gaps. */
  sequence: number;
  /** Server-assigned UUID. */
  id: string;
  /** Client idempotency key, or null. */
  transactionId: string | null;
  nodeId: string;
  type: TransactionType;
  /** Event time, RFC 3339 UTC with milliseconds. */
  timestamp: string;
  market: string | null;
  /** kWh; signed. */
  energyKwh: number | null;
  /** kW; signed (+ export/generation, - consumption). */
  powerKw: number | null;
  /** EUR per MWh; may be negative. */
  priceEurMwh: number | null;
  /** EUR; signed (+ revenue, - cost). */
  amountEur: number | null;
  status: TransactionStatus;
  /** `id` of the earlier record of the same node this one follows up, or null. */
  relatesTo: string | null;
  details: { [key: string]: JsonValue } | null;
  /** When the log acknowledged the record, RFC 3339 UTC with milliseconds; non-decreasing in sequence. */
  recordedAt: string;
}

/** A stored record: the hashed fields plus its chain links (64 lowercase hex characters each). */
export interface TransactionRecord extends HashedFields {
  prevHash: string;
  hash: string;
}

/** The hashed field names, in the order they are presented (the canonical form sorts them anyway). */
export const HASHED_FIELDS = [
  'sequence', 'id', 'transactionId', 'nodeId', 'type', 'timestamp', 'market', 'energyKwh', 'powerKw',
  'priceEurMwh', 'amountEur', 'status', 'relatesTo', 'details', 'recordedAt',
] as const satisfies readonly (keyof HashedFields)[];

/**
 * Canonical JSON (RFC 8785, JCS): object keys sorted by UTF-16 code units, no whitespace,
 * numbers and strings serialised as ECMAScript `JSON.stringify` does (shortest round-trip
 * number form, `-0` as `0`). Non-finite numbers and undefined values are refused, since they
 * have no JSON form that survives a round trip.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new TypeError('canonical JSON has no form for a non-finite number');
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object') {
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj).sort();
    const parts: string[] = [];
    for (const k of keys) {
      if (obj[k] === undefined) throw new TypeError(`canonical JSON has no form for undefined (key ${k})`);
      parts.push(`${JSON.stringify(k)}:${canonicalJson(obj[k])}`);
    }
    return `{${parts.join(',')}}`;
  }
  throw new TypeError(`canonical JSON has no form for a ${typeof value}`);
}

/** Picks exactly the hashed fields of a record (so extra presentation fields never enter the hash). */
export function hashedFieldsOf(r: HashedFields): HashedFields {
  const out: Record<string, unknown> = {};
  for (const k of HASHED_FIELDS) out[k] = r[k];
  return out as unknown as HashedFields;
}

/** `hash = hex(SHA-256(utf8(prevHash + canonicalJson(hashed fields))))`, prevHash as 64 lowercase hex characters. */
export function recordHash(prevHash: string, fields: HashedFields): string {
  return createHash('sha256').update(prevHash + canonicalJson(hashedFieldsOf(fields)), 'utf8').digest('hex');
}

/** Hash of a request body, for "same transactionId, same body?" on retries. */
export function requestHash(body: unknown): string {
  return createHash('sha256').update(canonicalJson(body), 'utf8').digest('hex');
}
