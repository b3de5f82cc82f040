import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { EventLog, LoggedEvent } from './event-log.js';

// Every instance appends every list of messages it receives (a channel message's lines); the
// first append wins and the others get its ids back, so ids are shared. Instances read the channel
// in the same order and each connection's scripts run in order, so ids also follow the channel's
// order. KEYS = stream, seen-key of the whole list; ARGV = min id, dedupe ms, then the messages.
// The first instance appends them all and remembers their ids (comma-joined) under the list's
// key: one GET/SET and one trim per list, not per message.
const APPEND_MANY_LUA = `
local existing = redis.call('GET', KEYS[2])
if existing then return existing end
local ids = {}
for i = 3, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'd', ARGV[i])
end
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[1])
local joined = table.concat(ids, ',')
redis.call('SET', KEYS[2], joined, 'PX', ARGV[2])
return joined`;
const APPEND_MANY_SHA = createHash('sha1').update(APPEND_MANY_LUA).digest('hex');
/** Messages per APPEND_MANY_LUA call: one command per write, short enough not to stall Redis. */
const APPEND_BATCH = 500;

export interface RedisEventLogOptions {
  /** How long entries are kept, ms (default 5 minutes). */
  windowMs?: number;
  /** Hard cap on entries whatever the rate (default 2,000,000), applied every 1,000 appends. */
  maxEntries?: number;
  /**
   * How long an instance may lag behind another in reading the channel and still get the
   * shared id, ms (default 15 s). Longer lag logs the message a second time.
   */
  dedupeMs?: number;
}

/** The replay log in a Redis Stream shared by every instance on one key prefix, trimmed by MINID to the window. */
export class RedisEventLog implements EventLog {
  readonly kind = 'redis' as const;
  readonly windowMs: number;
  private readonly maxEntries: number;
  private readonly dedupeMs: number;
  private readonly streamKey: string;
  private readonly seenPrefix: string;
  private appends = 0;

  constructor(
    private readonly redis: Redis,
    keyPrefix: string,
    opts: RedisEventLogOptions = {},
  ) {
    this.windowMs = opts.windowMs ?? 5 * 60_000;
    this.maxEntries = opts.maxEntries ?? 2_000_000;
    this.dedupeMs = opts.dedupeMs ?? 15_000;
    this.streamKey = `${keyPrefix}realtime:events`;
    this.seenPrefix = `${keyPrefix}realtime:seen:`;
  }

  async appendMany(messages: readonly string[]): Promise<string[]> {
    const ids: string[] = [];
    for (let i = 0; i < messages.length; i += APPEND_BATCH) {
      const part = messages.slice(i, i + APPEND_BATCH);
      const h = createHash('sha1');
      for (const m of part) h.update(m).update('\n');
      const keys = [this.streamKey, `${this.seenPrefix}n:${h.digest('base64url')}`];
      const args = [2, ...keys, String(Date.now() - this.windowMs), String(this.dedupeMs), ...part] as const;
      let out: unknown;
      try {
        out = await this.redis.evalsha(APPEND_MANY_SHA, ...args);
      } catch (err) {
        if (!(err instanceof Error) || !err.message.includes('NOSCRIPT')) throw err;
        out = await this.redis.eval(APPEND_MANY_LUA, ...args);
      }
      for (const id of String(out).split(',')) ids.push(id);
      const before = this.appends;
      this.appends += part.length;
      if (Math.floor(this.appends / 1000) !== Math.floor(before / 1000)) {
        this.redis.xtrim(this.streamKey, 'MAXLEN', '~', this.maxEntries).catch(() => undefined);
      }
    }
    return ids;
  }

  async readAfter(afterId: string, limit: number): Promise<LoggedEvent[]> {
    const rows = (await this.redis.xrange(this.streamKey, `(${afterId}`, '+', 'COUNT', limit)) as [string, string[]][];
    return rows.map(([id, fields]) => ({ id, data: fields[1] ?? '' }));
  }

  async close(): Promise<void> {
    /* the client belongs to the container */
  }
}
