import type { ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { Counter } from 'prom-client';
import type { PubSub } from '../cache/types.js';
import type { NodeRegistry } from '../metadata/registry.js';
import type { Metrics } from '../metrics/metrics.js';
import { compareEventIds, eventIdTime, type EventLog } from './event-log.js';
import type { Portfolio } from './portfolio.js';

/** Channel on which ingestion announces a node's new latest reading (see docs/architecture.md). */
export const TELEMETRY_LATEST_CHANNEL = 'telemetry.latest';

/**
 * One node's change: a line of a `telemetry.latest` message. Ingestion publishes one message per
 * write, one JSON object per line (a message of one line is one change).
 */
export interface LatestMessage {
  nodeId: string;
  /** Measurement time, RFC 3339. */
  timestamp: string;
  /** Arrival time, RFC 3339. */
  receivedAt: string;
  /** The reading in API shape. */
  reading: Record<string, unknown>;
}

/** What one SSE client asked for. Both filters given: an event must match both. */
export interface StreamFilter {
  /** Only these nodes (undefined: every node). */
  nodeIds?: ReadonlySet<string>;
  /** Only nodes of these technology types (undefined: every type). */
  types?: ReadonlySet<string>;
  /** Send `telemetry` events. */
  telemetry: boolean;
  /** Send periodic `portfolio` events. */
  portfolio: boolean;
}

/** Tunables of the stream; defaults in DEFAULT_STREAM_LIMITS. */
export interface StreamLimits {
  /** Events a client may have queued while its socket is full before its backlog is dropped for a `resync`. */
  maxBufferedEvents: number;
  /** Bytes a client may have queued before the same (whichever limit is hit first). */
  maxBufferedBytes: number;
  /** Interval of heartbeat comment lines, ms. */
  heartbeatMs: number;
  /** Interval of `portfolio` events, ms. */
  portfolioIntervalMs: number;
  /** Log entries read per page while replaying. */
  replayPageSize: number;
  /** Reconnection delay suggested to clients (`retry:`), ms. */
  retryMs: number;
}

export const DEFAULT_STREAM_LIMITS: StreamLimits = {
  maxBufferedEvents: 2000,
  maxBufferedBytes: 2 * 1024 * 1024,
  heartbeatMs: 15_000,
  portfolioIntervalMs: 5_000,
  replayPageSize: 1000,
  retryMs: 2000,
};

interface QueuedFrame {
  frame: string;
  id?: string;
}

/** One connected SSE client and its bounded backlog. */
class SseClient {
  /** Frames waiting for the socket to drain (or, while replaying, for the replay to end). */
  queue: QueuedFrame[] = [];
  queuedBytes = 0;
  replaying = false;
  /** Id of the newest event written to the socket or queued. */
  lastId?: string;
  /** Set when the backlog was dropped: the resync is sent once the socket drains. */
  resync?: { dropped: number; lastDroppedId?: string };
  closed = false;

  constructor(
    readonly res: ServerResponse,
    readonly filter: StreamFilter,
  ) {}

  wantsTelemetry(nodeId: string, type: string | undefined): boolean {
    const f = this.filter;
    if (!f.telemetry) return false;
    if (f.nodeIds && !f.nodeIds.has(nodeId)) return false;
    if (f.types && (type === undefined || !f.types.has(type))) return false;
    return true;
  }
}

/** Statistics of one client, for tests and /health. */
export interface ClientStats {
  queuedEvents: number;
  queuedBytes: number;
  replaying: boolean;
}

/**
 * Fans `telemetry.latest` messages out to this instance's SSE clients (every instance
 * subscribes, so a reading ingested anywhere reaches clients everywhere), gives each event
 * the shared log's id, replays the log after `Last-Event-ID`, sends `portfolio` events and
 * heartbeats. A client whose socket cannot keep up gets a bounded backlog; past the bound
 * the backlog is dropped and a `resync` event sent instead, so a slow reader costs neither
 * memory nor ingestion time.
 */
export class StreamHub {
  readonly limits: StreamLimits;
  private readonly clients = new Set<SseClient>();
  private unsubscribe?: () => Promise<void>;
  private heartbeat?: NodeJS.Timeout;
  private portfolioTimer?: NodeJS.Timeout;
  /** Keeps delivery in channel order even though each append is asynchronous. */
  private chain: Promise<void> = Promise.resolve();
  private readonly eventsSent: Counter<'event'>;
  private readonly resyncs: Counter<'reason'>;
  private readonly dropped: Counter;
  private readonly logFailures: Counter;

  constructor(
    private readonly deps: {
      pubsub: PubSub;
      log: EventLog;
      nodes: NodeRegistry;
      metrics: Metrics;
      logger: Logger;
      portfolio: () => Promise<Portfolio>;
    },
    limits: Partial<StreamLimits> = {},
  ) {
    this.limits = { ...DEFAULT_STREAM_LIMITS, ...limits };
    const registers = [deps.metrics.registry];
    deps.metrics.gauge('sse_clients', 'Connected SSE clients of /api/realtime/stream on this instance', () => this.clients.size);
    this.eventsSent = new Counter({ name: 'sse_events_sent_total', help: 'SSE events written or queued, by event', labelNames: ['event'], registers });
    this.resyncs = new Counter({ name: 'sse_resyncs_total', help: 'resync events sent, by reason (slow_client, replay_window)', labelNames: ['reason'], registers });
    this.dropped = new Counter({ name: 'sse_dropped_events_total', help: 'Events dropped from slow clients\u2019 backlogs', registers });
    this.logFailures = new Counter({ name: 'sse_event_log_failures_total', help: 'Events delivered without an id because the replay log was unreachable', registers });
  }

  get size(): number {
    return this.clients.size;
  }

  /** Per-client backlog figures. */
  stats(): ClientStats[] {
    return [...this.clients].map((c) => ({ queuedEvents: c.queue.length, queuedBytes: c.queuedBytes, replaying: c.replaying }));
  }

  /** Changes tunables at run time (tests shorten intervals); restarts timers when running. */
  setLimits(limits: Partial<StreamLimits>): void {
    Object.assign(this.limits, limits);
    if (this.heartbeat) this.startTimers();
  }

  async start(): Promise<void> {
    this.unsubscribe = await this.deps.pubsub.subscribe(TELEMETRY_LATEST_CHANNEL, (m) => this.onMessage(m));
    this.startTimers();
  }

  async stop(): Promise<void> {
    clearInterval(this.heartbeat);
    clearInterval(this.portfolioTimer);
    this.heartbeat = undefined;
    this.portfolioTimer = undefined;
    await this.unsubscribe?.();
    this.unsubscribe = undefined;
    this.closeAll();
    await this.chain;
  }

  /** Ends every client's response (server shutdown: SSE connections would keep it open). */
  closeAll(): void {
    for (const c of this.clients) this.drop(c, true);
  }

  /**
   * Takes over `res` as an event stream. With `lastEventId`, first replays the logged events
   * after it that match the filter, then continues live without gaps or repeats.
   */
  async connect(res: ServerResponse, filter: StreamFilter, lastEventId: string | undefined, headers: Record<string, string | string[] | number>): Promise<void> {
    res.writeHead(200, {
      ...headers,
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    res.socket?.setNoDelay(true);
    res.write(`retry: ${this.limits.retryMs}\n: connected\n\n`);
    const client = new SseClient(res, filter);
    client.replaying = lastEventId !== undefined;
    this.clients.add(client);
    const cleanup = () => this.drop(client, false);
    res.on('close', cleanup);
    res.on('error', cleanup);
    res.on('drain', () => this.flush(client));

    if (lastEventId !== undefined) {
      try {
        await this.replay(client, lastEventId);
      } catch (err) {
        // The log is unreachable: end the stream, the client reconnects with the same id.
        this.deps.logger.warn({ err }, 'SSE replay failed');
        this.drop(client, true);
        return;
      }
    }
    if (filter.portfolio) {
      this.deps
        .portfolio()
        .then((p) => this.send(client, portfolioFrame(p), undefined, 'portfolio'))
        .catch((err: unknown) => this.deps.logger.warn({ err }, 'portfolio for a new SSE client failed'));
    }
  }

  private async replay(client: SseClient, afterId: string): Promise<void> {
    if (eventIdTime(afterId) < Date.now() - this.deps.log.windowMs) {
      this.sendResync(client, 'replay_window', { dropped: null });
    } else {
      let cursor = afterId;
      for (;;) {
        const page = await this.deps.log.readAfter(cursor, this.limits.replayPageSize);
        for (const ev of page) {
          cursor = ev.id;
          const msg = parseMessage(ev.data);
          if (!msg) continue;
          const type = this.deps.nodes.get(msg.nodeId)?.type;
          if (!client.wantsTelemetry(msg.nodeId, type)) continue;
          if (client.closed) return;
          client.lastId = ev.id;
          this.eventsSent.inc({ event: 'telemetry' });
          if (!client.res.write(telemetryFrame(ev.id, msg, type))) await waitDrain(client.res);
        }
        if (page.length < this.limits.replayPageSize || client.closed) break;
      }
      client.lastId ??= afterId;
    }
    // Live events that arrived meanwhile; the log already covered those up to its last id.
    const pending = client.queue;
    const resync = client.resync;
    client.queue = [];
    client.queuedBytes = 0;
    client.resync = undefined;
    client.replaying = false;
    // The backlog overflowed while the replay wrote: what was dropped is covered by the resync.
    if (resync) this.sendResync(client, 'slow_client', resync);
    for (const q of pending) {
      if (q.id !== undefined && client.lastId !== undefined && compareEventIds(q.id, client.lastId) <= 0) continue;
      this.write(client, q);
    }
  }

  private onMessage(message: string): void {
    // One change per line (ingestion sends all of a write's changes in one message). Each line is
    // logged as it is; it is parsed only to be delivered here, and a line that does not parse is
    // skipped wherever it is read (here and on replay).
    const lines = message.split('\n').filter((l) => l.length > 0);
    if (lines.length === 0) return;
    // Logged even with no client here: a client reconnecting anywhere replays from the shared log.
    const appended = this.deps.log.appendMany(lines).then(
      (ids) => ids as (string | undefined)[],
      (err: unknown) => {
        this.logFailures.inc(lines.length);
        this.deps.logger.debug({ err }, 'event log append failed');
        return [] as (string | undefined)[];
      },
    );
    this.chain = this.chain.then(async () => {
      const ids = await appended;
      if (this.clients.size === 0) return;
      for (let i = 0; i < lines.length; i++) {
        const msg = parseMessage(lines[i]);
        if (msg) this.deliver(msg, ids[i]);
        else this.deps.logger.warn({ message: lines[i].slice(0, 200) }, 'malformed telemetry.latest line ignored');
      }
    });
  }

  private deliver(msg: LatestMessage, id: string | undefined): void {
    if (this.clients.size === 0) return;
    const type = this.deps.nodes.get(msg.nodeId)?.type;
    let frame: string | undefined;
    for (const c of this.clients) {
      if (!c.wantsTelemetry(msg.nodeId, type)) continue;
      frame ??= telemetryFrame(id, msg, type);
      this.send(c, frame, id, 'telemetry');
    }
  }

  private send(client: SseClient, frame: string, id: string | undefined, event: string): void {
    if (client.closed) return;
    this.eventsSent.inc({ event });
    const q = { frame, id };
    if (client.replaying || client.queue.length > 0 || client.resync || client.res.writableNeedDrain) {
      this.enqueue(client, q);
      return;
    }
    this.write(client, q);
  }

  private write(client: SseClient, q: QueuedFrame): void {
    if (q.id !== undefined) client.lastId = q.id;
    client.res.write(q.frame);
  }

  private enqueue(client: SseClient, q: QueuedFrame): void {
    client.queue.push(q);
    client.queuedBytes += q.frame.length;
    if (client.queue.length <= this.limits.maxBufferedEvents && client.queuedBytes <= this.limits.maxBufferedBytes) return;
    // Over the bound: forget the backlog; the client re-fetches current state on `resync`.
    const dropped = client.queue;
    let lastDroppedId = client.resync?.lastDroppedId;
    for (const d of dropped) if (d.id !== undefined) lastDroppedId = d.id;
    client.resync = { dropped: (client.resync?.dropped ?? 0) + dropped.length, lastDroppedId };
    this.dropped.inc(dropped.length);
    client.queue = [];
    client.queuedBytes = 0;
  }

  private flush(client: SseClient): void {
    if (client.closed || client.replaying) return;
    if (client.resync) {
      const r = client.resync;
      client.resync = undefined;
      this.sendResync(client, 'slow_client', r);
      if (client.res.writableNeedDrain) return;
    }
    while (client.queue.length > 0 && !client.res.writableNeedDrain) {
      const q = client.queue.shift() as QueuedFrame;
      client.queuedBytes -= q.frame.length;
      this.write(client, q);
    }
  }

  private sendResync(client: SseClient, reason: 'slow_client' | 'replay_window', r: { dropped: number | null; lastDroppedId?: string }): void {
    this.resyncs.inc({ reason });
    const data = JSON.stringify({
      reason,
      dropped: r.dropped,
      message:
        reason === 'slow_client'
          ? 'events were dropped because this client read too slowly; re-fetch current values'
          : 'Last-Event-ID is older than the replay window; re-fetch current values',
      refetch: ['/api/realtime/portfolio', '/api/telemetry/{nodeId}/latest'],
    });
    // Carrying the last dropped id moves the client's Last-Event-ID past what it re-fetches.
    const id = r.lastDroppedId && (!client.lastId || compareEventIds(r.lastDroppedId, client.lastId) > 0) ? r.lastDroppedId : undefined;
    this.write(client, { frame: `${id ? `id: ${id}\n` : ''}event: resync\ndata: ${data}\n\n`, id });
  }

  private drop(client: SseClient, end: boolean): void {
    if (client.closed) return;
    client.closed = true;
    client.queue = [];
    client.queuedBytes = 0;
    this.clients.delete(client);
    if (end) client.res.end();
  }

  private startTimers(): void {
    clearInterval(this.heartbeat);
    clearInterval(this.portfolioTimer);
    this.heartbeat = setInterval(() => {
      for (const c of this.clients) {
        // A client with a backlog is not idle; its socket is what needs time.
        if (!c.replaying && c.queue.length === 0 && !c.res.writableNeedDrain) c.res.write(': heartbeat\n\n');
      }
    }, this.limits.heartbeatMs);
    this.heartbeat.unref();
    this.portfolioTimer = setInterval(() => this.broadcastPortfolio(), this.limits.portfolioIntervalMs);
    this.portfolioTimer.unref();
  }

  private broadcastPortfolio(): void {
    const wanting = [...this.clients].filter((c) => c.filter.portfolio);
    if (wanting.length === 0) return;
    this.deps
      .portfolio()
      .then((p) => {
        const frame = portfolioFrame(p);
        for (const c of wanting) this.send(c, frame, undefined, 'portfolio');
      })
      .catch((err: unknown) => this.deps.logger.warn({ err }, 'portfolio event skipped'));
  }
}

/** One line of a `telemetry.latest` message (one change); undefined when malformed. */
function parseMessage(raw: string): LatestMessage | undefined {
  try {
    const m = JSON.parse(raw) as Partial<LatestMessage> | null;
    if (m && typeof m === 'object' && typeof m.nodeId === 'string' && m.reading && typeof m.reading === 'object') return m as LatestMessage;
  } catch {
    /* fall through */
  }
  return undefined;
}

/** The `telemetry` event: the node's new latest reading, with its type (null for a node unknown to metadata). */
function telemetryFrame(id: string | undefined, m: LatestMessage, type: string | undefined): string {
  const data = JSON.stringify({ nodeId: m.nodeId, type: type ?? null, timestamp: m.timestamp, receivedAt: m.receivedAt, reading: m.reading });
  return `${id !== undefined ? `id: ${id}\n` : ''}event: telemetry\ndata: ${data}\n\n`;
}

// Portfolio events carry no id: they are snapshots, not replayed, and leave Last-Event-ID alone.
function portfolioFrame(p: Portfolio): string {
  return `event: portfolio\ndata: ${JSON.stringify(p)}\n\n`;
}

function waitDrain(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}
