import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { HealthCheck } from '../cache/types.js';
import { AppError, unavailable } from '../http/errors.js';
import { decodeRows, encodeRows, type IngestQueue, type QueueStats } from './queue.js';
import { batchAboveQueueMax, queueFull } from './queue-postgres.js';
import type { IngestRow } from './validate.js';

// Bound check, append and depth count in one atomic step: -1 when the batch does not fit.
const ENQUEUE_SCRIPT = `
local depth = tonumber(redis.call('GET', KEYS[2]) or '0')
if depth + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return -1 end
redis.call('XADD', KEYS[1], '*', 'n', ARGV[1], 'p', ARGV[3])
return redis.call('INCRBY', KEYS[2], ARGV[1])`;

// Ack, delete and uncount together; only the first ack of an entry uncounts it (a reclaimed entry
// finished twice is counted once).
const ACK_SCRIPT = `
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 1 then
  redis.call('XDEL', KEYS[1], ARGV[2])
  redis.call('DECRBY', KEYS[2], ARGV[3])
end
return acked`;

type ScriptRedis = Redis & {
  ingestEnqueue(stream: string, depth: string, n: string, max: string, payload: string): Promise<number>;
  ingestAck(stream: string, depth: string, group: string, id: string, n: string): Promise<number>;
};

type StreamEntry = [id: string, fields: string[]];

export interface RedisQueueOptions {
  /** Bound in readings (INGEST_QUEUE_MAX). */
  max: number;
  /** Idle time after which another consumer's unacknowledged entry is taken over (ms). */
  reclaimIdleMs?: number;
  /** How often pending entries of dead consumers are looked for (ms). */
  reclaimEveryMs?: number;
  /**
   * Which rows of a redelivered entry are stored already with their own arrival stamp (see
   * storedWithArrival); they are not written again, so a redo is not counted as duplicates.
   */
  storedAlready?: (rows: readonly IngestRow[]) => Promise<boolean[]>;
}

/**
 * The async queue on Redis Streams: one stream entry per accepted batch, a consumer group shared by
 * every instance, XREADGROUP to take entries, XACK + XDEL once their readings are committed, and
 * XAUTOCLAIM to take over entries a crashed consumer left pending. Durability is Redis's own:
 * only AOF with `appendfsync always` loses nothing acknowledged.
 */
export class RedisQueue implements IngestQueue {
  readonly kind = 'redis' as const;
  private readonly stream: string;
  private readonly depthKey: string;
  private readonly group = 'ingest';
  private readonly consumer = `c-${randomUUID()}`;
  private readonly redis: ScriptRedis;
  private reader?: Redis;
  private running = false;
  private loop?: Promise<void>;
  private lastReclaim = 0;
  private redoOwn = true;

  constructor(
    redis: Redis,
    keyPrefix: string,
    private readonly write: (rows: IngestRow[]) => Promise<unknown>,
    private readonly logger: Logger,
    private readonly opts: RedisQueueOptions,
  ) {
    this.stream = `${keyPrefix}ingest:stream`;
    this.depthKey = `${keyPrefix}ingest:depth`;
    const r = redis as unknown as ScriptRedis;
    if (!(r as unknown as Partial<ScriptRedis>).ingestEnqueue) r.defineCommand('ingestEnqueue', { numberOfKeys: 2, lua: ENQUEUE_SCRIPT });
    if (!(r as unknown as Partial<ScriptRedis>).ingestAck) r.defineCommand('ingestAck', { numberOfKeys: 2, lua: ACK_SCRIPT });
    this.redis = r;
  }

  async enqueue(rows: readonly IngestRow[]): Promise<void> {
    if (rows.length > this.opts.max) throw batchAboveQueueMax(this.opts.max, rows.length);
    let res: number;
    try {
      res = await this.redis.ingestEnqueue(this.stream, this.depthKey, String(rows.length), String(this.opts.max), encodeRows(rows));
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'async ingestion queue unavailable');
      throw unavailable('the ingestion queue (Redis) is unavailable; retry shortly', 2, 'QUEUE_UNAVAILABLE');
    }
    if (res < 0) throw queueFull(this.opts.max);
  }

  async stats(): Promise<QueueStats> {
    const [depth, first] = await Promise.all([this.redis.get(this.depthKey), this.redis.xrange(this.stream, '-', '+', 'COUNT', 1)]);
    const oldest = first[0] ? Number(first[0][0].split('-')[0]) : undefined;
    return { depth: Number(depth ?? 0), lagSeconds: oldest === undefined ? 0 : Math.max(0, (Date.now() - oldest) / 1000) };
  }

  async health(): Promise<HealthCheck> {
    try {
      const s = await this.stats();
      return { ok: s.depth < this.opts.max, backend: 'redis', depth: s.depth, lagSeconds: s.lagSeconds, max: this.opts.max };
    } catch (err) {
      return { ok: false, backend: 'redis', error: err instanceof Error ? err.message : String(err) };
    }
  }

  async start(): Promise<void> {
    this.reader = this.redis.duplicate();
    this.reader.on('error', () => undefined);
    // Commands fail at once on a connection not yet ready (no offline queue): the first read would
    // fail and log a spurious warning, and the loop would wait a second before reading again.
    const reader = this.reader;
    if (reader.status !== 'ready') {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          reader.off('ready', done);
          resolve();
        };
        const timer = setTimeout(done, 5000);
        reader.once('ready', done);
      });
    }
    await this.ensureGroup().catch((err: unknown) => this.logger.warn({ err }, 'could not create the ingestion consumer group yet'));
    this.running = true;
    this.loop = this.consume();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
    this.reader?.disconnect();
  }

  /**
   * Takes over entries another consumer left unacknowledged for at least `minIdleMs` and writes
   * them. Returns how many it wrote. Runs periodically; public for tests.
   */
  async reclaim(minIdleMs = this.opts.reclaimIdleMs ?? 60_000): Promise<number> {
    let cursor = '0-0';
    let done = 0;
    do {
      const res = (await this.redis.xautoclaim(this.stream, this.group, this.consumer, minIdleMs, cursor, 'COUNT', 16)) as [string, (StreamEntry | null)[]];
      cursor = res[0];
      const entries = res[1].filter((e): e is StreamEntry => e !== null && Array.isArray(e[1]));
      for (const e of entries) {
        await this.process(e, true);
        done++;
      }
    } while (cursor !== '0-0' && this.running);
    return done;
  }

  private async ensureGroup(): Promise<void> {
    try {
      await this.redis.xgroup('CREATE', this.stream, this.group, '0', 'MKSTREAM');
    } catch (err) {
      if (!String((err as Error).message).includes('BUSYGROUP')) throw err;
    }
  }

  /**
   * Writes an entry's readings and acknowledges it. A redelivered entry (reclaimed from a dead
   * consumer, or this consumer's own after a failure) may have been written already, all or in
   * part, before the acknowledgement was lost: rows stored with their own arrival stamp are left
   * out, so the quality counters do not count the redo as duplicates (the same rows would be
   * no-ops anyway). An identical reading of another request stamped in the same microsecond on
   * another instance would be left out too, and so not counted as a duplicate: a crash and such a
   * coincidence together.
   */
  private async process([id, fields]: StreamEntry, redelivered: boolean): Promise<void> {
    let n = '0';
    let payload = '[]';
    for (let i = 0; i + 1 < fields.length; i += 2) {
      if (fields[i] === 'n') n = fields[i + 1];
      else if (fields[i] === 'p') payload = fields[i + 1];
    }
    let rows = decodeRows(payload);
    if (redelivered && this.opts.storedAlready) {
      const stored = await this.opts.storedAlready(rows);
      rows = rows.filter((_, i) => !stored[i]);
    }
    if (rows.length > 0) await this.write(rows);
    await this.redis.ingestAck(this.stream, this.depthKey, this.group, id, n);
  }

  private async consume(): Promise<void> {
    const reader = this.reader as Redis;
    while (this.running) {
      try {
        if (Date.now() - this.lastReclaim > (this.opts.reclaimEveryMs ?? 10_000)) {
          this.lastReclaim = Date.now();
          await this.reclaim();
        }
        // After a failure, first redo this consumer's own pending entries (id 0 reads them back).
        const from = this.redoOwn ? '0' : '>';
        const res = (
          from === '>'
            ? await reader.xreadgroup('GROUP', this.group, this.consumer, 'COUNT', 4, 'BLOCK', 500, 'STREAMS', this.stream, '>')
            : await reader.xreadgroup('GROUP', this.group, this.consumer, 'COUNT', 4, 'STREAMS', this.stream, '0')
        ) as [string, StreamEntry[]][] | null;
        if (from === '0' && (!res || res.every(([, entries]) => entries.length === 0))) this.redoOwn = false;
        if (!res) continue;
        for (const [, entries] of res) for (const e of entries) await this.process(e, from === '0');
      } catch (err) {
        const msg = err instanceof Error ? err.message : String(err);
        if (msg.includes('NOGROUP')) await this.ensureGroup().catch(() => undefined);
        else if (!(err instanceof AppError)) this.logger.warn({ err: msg }, 'async ingestion consumer failed; retrying');
        // An entry that failed stays pending in this consumer's list; it is redone next.
        this.redoOwn = true;
        if (this.running) await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }
}
