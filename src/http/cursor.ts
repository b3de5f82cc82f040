import { createHash } from 'node:crypto';
import { badRequest } from './errors.js';

/**
 * Opaque keyset cursors: the sort key of the last item served, as base64url JSON, led by a tag of
 * the list that issued it (`scope`: the route and the filters that define the list's items and
 * order, such as the node, type or point of origin; not the window, such as from/to or radiusKm,
 * which a client may move between pages). Clients pass them back unchanged; anything else,
 * including a cursor of another list and an empty one, is a 400 INVALID_CURSOR.
 */
export function encodeCursor(scope: string, key: readonly (string | number)[]): string {
  return Buffer.from(JSON.stringify([scopeTag(scope), ...key])).toString('base64url');
}

/** 48 bits of SHA-256 of the scope: tells lists apart, keeps cursors short. */
function scopeTag(scope: string): string {
  return createHash('sha256').update(scope).digest('base64url').slice(0, 8);
}

export function decodeCursor(cursor: string | undefined, arity: number, scope: string): (string | number)[] | undefined {
  if (cursor === undefined) return undefined;
  try {
    const key: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    // Only what this service issues: its tag, then finite numbers and strings without NUL (PostgreSQL text cannot hold one).
    if (
      Array.isArray(key) &&
      key.length === arity + 1 &&
      key[0] === scopeTag(scope) &&
      key.every((k) => (typeof k === 'string' && !k.includes('\u0000')) || (typeof k === 'number' && Number.isFinite(k)))
    ) {
      return key.slice(1) as (string | number)[];
    }
  } catch {
    /* fall through */
  }
  throw invalidCursor();
}

export function invalidCursor() {
  return badRequest('cursor is not one this list issued', [{ path: '/cursor', message: 'invalid cursor' }], 'INVALID_CURSOR');
}

/** Slices a `limit + 1` result into a page and its next cursor. */
export function page<T>(rows: T[], limit: number, scope: string, keyOf: (row: T) => (string | number)[]): { items: T[]; nextCursor: string | null } {
  const items = rows.slice(0, limit);
  const last = items[items.length - 1];
  return { items, nextCursor: rows.length > limit && last !== undefined ? encodeCursor(scope, keyOf(last)) : null };
}

/** A scope string from its parts (NUL-separated: no part can hold a NUL that would blur two). */
export function cursorScope(...parts: (string | number | undefined)[]): string {
  return parts.map((p) => (p === undefined ? '' : String(p))).join('\u0000');
}
