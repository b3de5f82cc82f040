import { createHash, randomBytes } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type pg from 'pg';
import type { ApiKeySpec, Scope } from '../config.js';
import { AppError } from './errors.js';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Scope a caller needs for this route; routes without one are public. */
    scope?: Scope;
  }
  interface FastifyRequest {
    /** sha256 of the caller's key (hex), set by the auth hook on protected routes. */
    apiKeyId?: string;
  }
}

export function hashKey(key: string): string {
  return createHash('sha256').update(key).digest('hex');
}

/** Extracts the presented key from `Authorization: Bearer …` or `X-API-Key`. */
export function presentedKey(req: FastifyRequest): string | undefined {
  const auth = req.headers.authorization;
  if (typeof auth === 'string') {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(auth);
    if (m) return m[1];
  }
  const header = req.headers['x-api-key'];
  return typeof header === 'string' && header.length > 0 ? header : undefined;
}

/** Known keys by hash. Keys from `API_KEYS` live only in memory; a generated key is kept only as its hash. */
export class KeyRing {
  private readonly byHash = new Map<string, Set<Scope>>();
  /** Known keys seen so far (bounded by the ring): their hash is not recomputed per request. */
  private readonly seen = new Map<string, { hash: string; scopes: Set<Scope> }>();

  add(hash: string, scopes: readonly Scope[]): void {
    this.byHash.set(hash, new Set(scopes));
    this.seen.clear();
  }

  /** The key's hash and scopes, or undefined for an unknown key (unknown keys are not remembered). */
  lookup(key: string): { hash: string; scopes: Set<Scope> } | undefined {
    const hit = this.seen.get(key);
    if (hit) return hit;
    const hash = hashKey(key);
    const scopes = this.byHash.get(hash);
    if (!scopes) return undefined;
    const entry = { hash, scopes };
    this.seen.set(key, entry);
    return entry;
  }

  get size(): number {
    return this.byHash.size;
  }
}

/**
 * Builds the key ring. With `API_KEYS` configured those keys are used. Without, the keys
 * stored in the database are used, and on first start an admin key is generated, its hash
 * stored, and the key itself handed to `announce` once.
 */
export async function loadKeyRing(pool: pg.Pool, configured: ApiKeySpec[] | undefined, announce: (key: string) => void): Promise<KeyRing> {
  const ring = new KeyRing();
  if (configured) {
    for (const k of configured) ring.add(hashKey(k.key), k.scopes);
    return ring;
  }
  const key = `vpp_${randomBytes(24).toString('base64url')}`;
  // Only the first instance to start on an empty table inserts; the others read what it stored.
  const inserted = await pool.query(
    `INSERT INTO api_keys (key_hash, scopes, label)
     SELECT $1, $2, 'generated at first start'
     WHERE NOT EXISTS (SELECT 1 FROM api_keys)`,
    [hashKey(key), ['admin']],
  );
  if (inserted.rowCount === 1) announce(key);
  const { rows } = await pool.query<{ key_hash: string; scopes: Scope[] }>('SELECT key_hash, scopes FROM api_keys WHERE revoked_at IS NULL');
  for (const r of rows) ring.add(r.key_hash, r.scopes);
  return ring;
}

/** onRequest hook: 401 without or with an unknown key, 403 when the key lacks the route's scope. */
export function authHook(ring: KeyRing) {
  return async (req: FastifyRequest, _reply: FastifyReply): Promise<void> => {
    const needed = req.routeOptions.config?.scope;
    if (!needed) return;
    const key = presentedKey(req);
    if (!key) throw new AppError(401, 'UNAUTHORIZED', 'missing API key: send Authorization: Bearer <key> or X-API-Key');
    const known = ring.lookup(key);
    if (!known) throw new AppError(401, 'UNAUTHORIZED', 'unknown API key');
    const scopes = known.scopes;
    req.apiKeyId = known.hash;
    if (!scopes.has(needed) && !scopes.has('admin')) {
      throw new AppError(403, 'FORBIDDEN', `this key lacks the "${needed}" scope`);
    }
  };
}
