import { compareEventIds, type EventLog, type LoggedEvent } from './event-log.js';

/**
 * The replay log of a single instance without Redis: an array in id order, trimmed to the
 * window and to `maxEntries` (so memory is bounded whatever the reading rate).
 */
export class MemoryEventLog implements EventLog {
  readonly kind = 'memory' as const;
  private entries: LoggedEvent[] = [];
  /** Index of the first live entry; trimmed entries are cut in batches to keep append O(1). */
  private head = 0;
  private lastMs = 0;
  private seq = 0;

  constructor(
    readonly windowMs = 5 * 60_000,
    private readonly maxEntries = 200_000,
  ) {}

  private appendOne(message: string): string {
    const now = Date.now();
    // Ids never go backwards, even when the wall clock does.
    if (now > this.lastMs) {
      this.lastMs = now;
      this.seq = 0;
    } else {
      this.seq += 1;
    }
    const id = `${this.lastMs}-${this.seq}`;
    this.entries.push({ id, data: message });
    this.trim(now);
    return id;
  }

  async appendMany(messages: readonly string[]): Promise<string[]> {
    const ids: string[] = [];
    for (const m of messages) ids.push(this.appendOne(m));
    return ids;
  }

  async readAfter(afterId: string, limit: number): Promise<LoggedEvent[]> {
    this.trim(Date.now());
    let lo = this.head;
    let hi = this.entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (compareEventIds(this.entries[mid].id, afterId) <= 0) lo = mid + 1;
      else hi = mid;
    }
    return this.entries.slice(lo, lo + limit);
  }

  async close(): Promise<void> {
    this.entries = [];
    this.head = 0;
  }

  private trim(now: number): void {
    const minMs = now - this.windowMs;
    while (this.head < this.entries.length && (this.entries.length - this.head > this.maxEntries || Number(this.entries[this.head].id.split('-')[0]) < minMs)) {
      this.head += 1;
    }
    if (this.head > 1024 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.head = 0;
    }
  }
}
