/**
 * Key-value cache with per-entry expiry. Values are strings (callers serialise).
 * Implementations never throw on a dependency outage: a failed `get` is a miss and a
 * failed write is skipped, so callers fall back to PostgreSQL.
 */
export interface Cache {
  readonly kind: 'redis' | 'memory';
  get(key: string): Promise<string | null>;
  /** @param ttlSeconds expiry in seconds (> 0) */
  set(key: string, value: string, ttlSeconds: number): Promise<void>;
  /**
   * Sets fields of the hash at `key` (creating it) and gives the whole hash the expiry
   * `ttlSeconds`, in one round trip. Fields live and expire with their hash.
   */
  hashSet(key: string, fields: readonly (readonly [field: string, value: string])[], ttlSeconds: number): Promise<void>;
  /** One field of the hash at `key`; null when the hash or the field is absent. */
  hashGet(key: string, field: string): Promise<string | null>;
  del(keys: string[]): Promise<void>;
  /** Deletes every key that starts with `prefix` (used for invalidating a family of entries). */
  delPrefix(prefix: string): Promise<void>;
  /** Round-trip check for `/health`. */
  ping(): Promise<HealthCheck>;
  close(): Promise<void>;
}

/** Fire-and-forget messages fanned out to every subscriber in every instance sharing the backend. */
export interface PubSub {
  readonly kind: 'redis' | 'memory';
  publish(channel: string, message: string): Promise<void>;
  /** Returns a function that removes this handler. */
  subscribe(channel: string, handler: (message: string) => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

export interface HealthCheck {
  ok: boolean;
  latencyMs?: number;
  error?: string;
  [extra: string]: unknown;
}
