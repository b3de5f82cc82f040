import { badRequest } from './errors.js';

/**
 * Opaque keyset cursors: the sort key of the last item served, as base64url JSON.
 * Clients pass them back unchanged; anything else is a 400.
 */
export function encodeCursor(key: readonly (string | number)[]): string {
  return Buffer.from(JSON.stringify(key)).toString('base64url');
}

export function decodeCursor(cursor: string | undefined, arity: number): (string | number)[] | undefined {
  if (cursor === undefined || cursor === '') return undefined;
  try {
    const key: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    // Only what this service issues: finite numbers, strings without NUL (PostgreSQL text cannot hold one).
    if (Array.isArray(key) && key.length === arity && key.every((k) => (typeof k === 'string' && !k.includes('\u0000')) || (typeof k === 'number' && Number.isFinite(k)))) {
      return key as (string | number)[];
    }
  } catch {
    /* fall through */
  }
  throw badRequest('cursor is not one this service issued', [{ path: '/cursor', message: 'invalid cursor' }], 'INVALID_CURSOR');
}

/** Slices a `limit + 1` result into a page and its next cursor. */
export function page<T>(rows: T[], limit: number, keyOf: (row: T) => (string | number)[]): { items: T[]; nextCursor: string | null } {
  const items = rows.slice(0, limit);
  const last = items[items.length - 1];
  return { items, nextCursor: rows.length > limit && last !== undefined ? encodeCursor(keyOf(last)) : null };
}
