import type { Redis } from 'ioredis';
import type { Db } from '../db/pool.js';
import type { Metrics } from '../metrics/metrics.js';
import type { LatestChange } from './writer.js';

/** A node's newest reading as kept in telemetry_latest and the cache. */
export interface LatestEntry {
  /** Measurement time, epoch ms. */
  ts: number;
  /** Arrival time, epoch ms. */
  receivedAt: number;
  /** The reading in API shape (camelCase; nodeId and timestamp included). */
  reading: Record<string, unknown>;
  /** telemetry_latest.version: grows per node in commit order. */
  version: number;
}

/** A memory cache entry: the reading as the writer's JSON text, parsed on first read. */
interface MemoryEntry {
  ts: number;
  receivedAt: number;
  version: number;
  reading?: Record<string, unknown>;
  readingJson?: string;
}

/** Cache entries outlive bursts of reads; writes refresh them, so this only bounds memory/keys of idle nodes (s). */
const TTL_SECONDS = 3600;
const MEMORY_MAX_ENTRIES = 200_000;

// Sets each entry only when it is newer than the cached one, so a reader filling the cache from an
// older database snapshot can never overwrite what a writer stored after its commit.
// ARGV = ttl, then version and value per key.
const CAS_MANY_SCRIPT = `
local ttl = ARGV[1]
for i = 1, #KEYS do
  local version = ARGV[2 * i]
  local cur = redis.call('GET', KEYS[i])
  local older = true
  if cur then
    local sep = string.find(cur, '|', 1, true)
    if sep and tonumber(string.sub(cur, 1, sep - 1)) >= tonumber(version) then older = false end
  end
  if older then redis.call('SET', KEYS[i], version .. '|' .. ARGV[2 * i + 1], 'PX', ttl) end
end
return #KEYS`;

/** Keys per CAS_MANY_SCRIPT call: one command instead of one per node, kept short enough not to stall Redis. */
const CAS_BATCH = 200;

type CasRedis = Redis & { latestCasMany(numKeys: number, ...keysAndArgs: string[]): Promise<number> };

/**
 * Latest readings: telemetry_latest is the truth, a version-checked cache in front. With Redis the
 * cache is shared by every instance (a Lua compare-and-set on the version); without, it is this
 * process's memory. The writer stores each change after its commit and before it answers, so a
 * read after an acknowledged write never sees an older reading.
 */
export class LatestStore {
  private readonly memory = new Map<string, MemoryEntry>();
  private readonly redis?: CasRedis;
  private readonly prefix: string;

  constructor(
    private readonly db: Db,
    private readonly metrics: Metrics,
    redis: Redis | undefined,
    keyPrefix: string,
  ) {
    this.prefix = `${keyPrefix}cache:telemetry:latest:`;
    if (redis) {
      if (!(redis as unknown as Partial<CasRedis>).latestCasMany) redis.defineCommand('latestCasMany', { lua: CAS_MANY_SCRIPT });
      this.redis = redis as CasRedis;
    }
  }

  /** The node's newest reading, or undefined when it has none. */
  async get(nodeId: string): Promise<LatestEntry | undefined> {
    const cached = await this.cacheGet(nodeId);
    if (cached) {
      this.metrics.cacheRequests.inc({ cache: 'telemetry_latest', result: 'hit' });
      return cached;
    }
    this.metrics.cacheRequests.inc({ cache: 'telemetry_latest', result: 'miss' });
    const entry = await this.metrics.timeStore('telemetry_latest', 'get', async () => {
      const { rows } = await this.db.pool.query<{ ts: number; received_at: number; reading: Record<string, unknown>; version: number }>(
        `SELECT (extract(epoch FROM ts) * 1000)::float8 AS ts, (extract(epoch FROM received_at) * 1000)::float8 AS received_at, reading, version
         FROM telemetry_latest WHERE node_id = $1`,
        [nodeId],
      );
      const r = rows[0];
      return r ? { ts: r.ts, receivedAt: r.received_at, reading: r.reading, version: Number(r.version) } : undefined;
    });
    if (entry) await this.put(nodeId, entry);
    return entry;
  }

  /** Stores committed changes (called by the writer after commit, before answering). */
  async putAll(changes: readonly LatestChange[]): Promise<void> {
    if (changes.length === 0) return;
    if (!this.redis) {
      for (const c of changes) this.putMemory(c.nodeId, { ts: c.ts, receivedAt: c.receivedAt, version: c.version, readingJson: c.readingJson });
      return;
    }
    try {
      const ttl = String(TTL_SECONDS * 1000);
      const calls: Promise<number>[] = [];
      for (let i = 0; i < changes.length; i += CAS_BATCH) {
        const part = changes.slice(i, i + CAS_BATCH);
        const args: string[] = part.map((c) => this.prefix + c.nodeId);
        args.push(ttl);
        for (const c of part) args.push(String(c.version), encode(c.ts, c.receivedAt, c.readingJson));
        calls.push(this.redis.latestCasMany(part.length, ...args));
      }
      await Promise.all(calls);
    } catch {
      // The cache could not take the new values: drop what it holds so reads fall back to the database.
      await this.redis.del(...changes.map((c) => this.prefix + c.nodeId)).catch(() => undefined);
    }
  }

  private async put(nodeId: string, e: LatestEntry): Promise<void> {
    if (!this.redis) {
      this.putMemory(nodeId, e);
      return;
    }
    await this.redis.latestCasMany(1, this.prefix + nodeId, String(TTL_SECONDS * 1000), String(e.version), encode(e.ts, e.receivedAt, JSON.stringify(e.reading))).catch(() => undefined);
  }

  private putMemory(nodeId: string, e: MemoryEntry): void {
    const cur = this.memory.get(nodeId);
    if (cur && cur.version >= e.version) return;
    if (!cur && this.memory.size >= MEMORY_MAX_ENTRIES) this.memory.delete(this.memory.keys().next().value as string);
    this.memory.set(nodeId, { ts: e.ts, receivedAt: e.receivedAt, version: e.version, reading: e.reading, readingJson: e.readingJson });
  }

  private async cacheGet(nodeId: string): Promise<LatestEntry | undefined> {
    if (!this.redis) {
      const m = this.memory.get(nodeId);
      if (!m) return undefined;
      m.reading ??= JSON.parse(m.readingJson as string) as Record<string, unknown>;
      return { ts: m.ts, receivedAt: m.receivedAt, reading: m.reading, version: m.version };
    }
    let raw: string | null;
    try {
      raw = await this.redis.get(this.prefix + nodeId);
    } catch {
      return undefined;
    }
    if (!raw) return undefined;
    const sep = raw.indexOf('|');
    const body = JSON.parse(raw.slice(sep + 1)) as { ts: number; receivedAt: number; reading: Record<string, unknown> };
    return { ...body, version: Number(raw.slice(0, sep)) };
  }
}

/** A Redis cache value's JSON (after its `version|` prefix), from the reading's JSON text. */
function encode(ts: number, receivedAt: number, readingJson: string): string {
  return `{"ts":${ts},"receivedAt":${receivedAt},"reading":${readingJson}}`;
}
