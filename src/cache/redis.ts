import { Redis } from 'ioredis';
import type { Cache, HealthCheck, PubSub } from './types.js';

export interface RedisOptions {
  url: string;
  /** Prepended to every key and channel, so several deployments or test runs can share one Redis. */
  keyPrefix?: string;
  onError?: (err: Error) => void;
}

/**
 * A Redis connection that fails fast while Redis is down (no offline queue, one retry per
 * command) and reconnects by itself, so callers can fall back instead of hanging.
 */
export function createRedisClient(opts: RedisOptions, role = 'main'): Redis {
  const client = new Redis(opts.url, {
    enableOfflineQueue: role === 'subscriber',
    maxRetriesPerRequest: 1,
    connectTimeout: 2000,
    commandTimeout: role === 'subscriber' ? undefined : 2000,
    retryStrategy: (times) => Math.min(100 * times, 1000),
    connectionName: `vpp-data-layer:${role}`,
    lazyConnect: false,
  });
  client.on('error', (err: Error) => opts.onError?.(err));
  return client;
}

export class RedisCache implements Cache {
  readonly kind = 'redis' as const;
  private readonly prefix: string;

  constructor(
    private readonly client: Redis,
    keyPrefix = '',
  ) {
    this.prefix = `${keyPrefix}cache:`;
  }

  async get(key: string): Promise<string | null> {
    try {
      return await this.client.get(this.prefix + key);
    } catch {
      return null;
    }
  }

  async set(key: string, value: string, ttlSeconds: number): Promise<void> {
    try {
      await this.client.set(this.prefix + key, value, 'PX', Math.max(1, Math.round(ttlSeconds * 1000)));
    } catch {
      /* a cache write that fails is a later miss */
    }
  }

  async hashSet(key: string, fields: readonly (readonly [string, string])[], ttlSeconds: number): Promise<void> {
    if (fields.length === 0) return;
    const args: string[] = [];
    for (const [f, v] of fields) args.push(f, v);
    try {
      const k = this.prefix + key;
      await this.client.pipeline().hset(k, ...args).pexpire(k, Math.max(1, Math.round(ttlSeconds * 1000))).exec();
    } catch {
      /* as set */
    }
  }

  async hashGet(key: string, field: string): Promise<string | null> {
    try {
      return await this.client.hget(this.prefix + key, field);
    } catch {
      return null;
    }
  }

  async del(keys: string[]): Promise<void> {
    if (keys.length === 0) return;
    try {
      await this.client.del(...keys.map((k) => this.prefix + k));
    } catch {
      /* entries expire by TTL; invalidation also bumps generations where staleness matters */
    }
  }

  async delPrefix(prefix: string): Promise<void> {
    try {
      let cursor = '0';
      do {
        const [next, keys] = await this.client.scan(cursor, 'MATCH', `${this.prefix}${escapeGlob(prefix)}*`, 'COUNT', 500);
        cursor = next;
        if (keys.length) await this.client.unlink(...keys);
      } while (cursor !== '0');
    } catch {
      /* see del */
    }
  }

  async ping(): Promise<HealthCheck> {
    const t0 = performance.now();
    try {
      await this.client.ping();
      return { ok: true, latencyMs: round(performance.now() - t0) };
    } catch (err) {
      return { ok: false, error: err instanceof Error ? err.message : String(err) };
    }
  }

  async close(): Promise<void> {
    /* the client is owned by the container */
  }
}

export class RedisPubSub implements PubSub {
  readonly kind = 'redis' as const;
  private readonly handlers = new Map<string, Set<(message: string) => void>>();

  constructor(
    private readonly publisher: Redis,
    private readonly subscriber: Redis,
    private readonly prefix = '',
  ) {
    this.subscriber.on('message', (channel: string, message: string) => {
      const set = this.handlers.get(channel.slice(this.prefix.length));
      if (set) for (const h of set) h(message);
    });
  }

  async publish(channel: string, message: string): Promise<void> {
    try {
      await this.publisher.publish(this.prefix + channel, message);
    } catch {
      /* fan-out is best effort; SSE clients resync from the latest values */
    }
  }

  async subscribe(channel: string, handler: (message: string) => void): Promise<() => Promise<void>> {
    let set = this.handlers.get(channel);
    if (!set) {
      set = new Set();
      this.handlers.set(channel, set);
      await this.subscriber.subscribe(this.prefix + channel);
    }
    set.add(handler);
    return async () => {
      const s = this.handlers.get(channel);
      if (!s) return;
      s.delete(handler);
      if (s.size === 0) {
        this.handlers.delete(channel);
        await this.subscriber.unsubscribe(this.prefix + channel).catch(() => undefined);
      }
    };
  }

  async close(): Promise<void> {
    this.handlers.clear();
  }
}

function escapeGlob(s: string): string {
  return s.replace(/[*?[\]\\]/g, '\\$&');
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
