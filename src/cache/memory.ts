import { EventEmitter } from 'node:events';
import type { Cache, HealthCheck, PubSub } from './types.js';

/** In-process cache for a single instance without Redis. Expired entries are dropped lazily and by a sweep. */
export class MemoryCache implements Cache {
  readonly kind = 'memory' as const;
  /** A string value, or a hash's fields. */
  private readonly entries = new Map<string, { value: string | Map<string, string>; expiresAt: number }>();
  private readonly sweep: NodeJS.Timeout;

  constructor(private readonly maxEntries = 100_000) {
    this.sweep = setInterval(() => this.dropExpired(), 30_000);
    this.sweep.unref();
  }

  private live(key: string): { value: string | Map<string, string>; expiresAt: number } | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    if (e.expiresAt <= Date.now()) {
      this.entries.delete(key);
      return undefined;
    }
    return e;
  }

  async get(key: string): Promise<string | null> {
    const e = this.live(key);
    // A hash read as a string is a miss, as Redis's WRONGTYPE is for RedisCache.
    return e && typeof e.value === 'string' ? e.value : null;
  }

  async set(key: string, value: string, ttlSeconds: number): Promise<void> {
    this.makeRoom(key);
    this.entries.set(key, { value, expiresAt: Date.now() + ttlSeconds * 1000 });
  }

  async hashSet(key: string, fields: readonly (readonly [string, string])[], ttlSeconds: number): Promise<void> {
    if (fields.length === 0) return;
    const e = this.live(key);
    const map = e && typeof e.value !== 'string' ? e.value : new Map<string, string>();
    for (const [f, v] of fields) map.set(f, v);
    this.makeRoom(key);
    this.entries.set(key, { value: map, expiresAt: Date.now() + ttlSeconds * 1000 });
  }

  async hashGet(key: string, field: string): Promise<string | null> {
    const e = this.live(key);
    return e && typeof e.value !== 'string' ? (e.value.get(field) ?? null) : null;
  }

  private makeRoom(key: string): void {
    if (this.entries.size >= this.maxEntries && !this.entries.has(key)) {
      this.dropExpired();
      // Still full: evict the oldest insertion (Map iterates in insertion order).
      if (this.entries.size >= this.maxEntries) this.entries.delete(this.entries.keys().next().value as string);
    }
  }

  async del(keys: string[]): Promise<void> {
    for (const k of keys) this.entries.delete(k);
  }

  async delPrefix(prefix: string): Promise<void> {
    for (const k of this.entries.keys()) if (k.startsWith(prefix)) this.entries.delete(k);
  }

  async ping(): Promise<HealthCheck> {
    return { ok: true, latencyMs: 0, entries: this.entries.size };
  }

  async close(): Promise<void> {
    clearInterval(this.sweep);
    this.entries.clear();
  }

  private dropExpired(): void {
    const now = Date.now();
    for (const [k, e] of this.entries) if (e.expiresAt <= now) this.entries.delete(k);
  }
}

/** In-process pub/sub: reaches subscribers of this process only. */
export class MemoryPubSub implements PubSub {
  readonly kind = 'memory' as const;
  private readonly emitter = new EventEmitter();

  constructor() {
    this.emitter.setMaxListeners(0);
  }

  async publish(channel: string, message: string): Promise<void> {
    // Deliver asynchronously like a broker would, so publishers never run subscriber code inline.
    queueMicrotask(() => this.emitter.emit(channel, message));
  }

  async subscribe(channel: string, handler: (message: string) => void): Promise<() => Promise<void>> {
    this.emitter.on(channel, handler);
    return async () => {
      this.emitter.off(channel, handler);
    };
  }

  async close(): Promise<void> {
    this.emitter.removeAllListeners();
  }
}
