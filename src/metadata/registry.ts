import type { Logger } from 'pino';
import type { PubSub } from '../cache/types.js';
import type { Db } from '../db/pool.js';

/** What hot paths (ingestion, real-time) need to know about a node, held in memory. */
export interface NodeInfo {
  nodeId: string;
  type: string;
  status: string;
  capacityKw: number;
  storageCapacityKwh: number | null;
  timezone: string;
  telemetryIntervalSeconds: number;
}

/** Pub/sub channel on which a metadata change is announced; the message is the nodeId. */
export const METADATA_CHANGED_CHANNEL = 'metadata.changed';

interface NodeRow {
  node_id: string;
  type: string;
  status: string;
  capacity_kw: number;
  storage_capacity_kwh: number | null;
  timezone: string;
  telemetry_interval_seconds: number;
}

const SELECT = `SELECT node_id, type, status, capacity_kw, storage_capacity_kwh, timezone, telemetry_interval_seconds FROM nodes`;

function toInfo(r: NodeRow): NodeInfo {
  return {
    nodeId: r.node_id,
    type: r.type,
    status: r.status,
    capacityKw: r.capacity_kw,
    storageCapacityKwh: r.storage_capacity_kwh,
    timezone: r.timezone,
    telemetryIntervalSeconds: r.telemetry_interval_seconds,
  };
}

/**
 * Every node's hot-path facts in memory, so ingestion never queries per reading. Loaded at
 * start, updated when any instance announces a change on `metadata.changed`, and fully
 * reloaded every `refreshMs` as a safety net for a missed message.
 */
export class NodeRegistry {
  private nodes = new Map<string, NodeInfo>();
  private unsubscribe?: () => Promise<void>;
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly db: Db,
    private readonly pubsub: PubSub,
    private readonly logger: Logger,
    private readonly refreshMs = 60_000,
  ) {}

  get(nodeId: string): NodeInfo | undefined {
    return this.nodes.get(nodeId);
  }

  has(nodeId: string): boolean {
    return this.nodes.has(nodeId);
  }

  all(): IterableIterator<NodeInfo> {
    return this.nodes.values();
  }

  get size(): number {
    return this.nodes.size;
  }

  async start(): Promise<void> {
    this.unsubscribe = await this.pubsub.subscribe(METADATA_CHANGED_CHANNEL, (nodeId) => this.reloadWithRetry(nodeId, 3));
    await this.reloadAll();
    this.timer = setInterval(() => {
      this.reloadAll().catch((err: unknown) => this.logger.warn({ err }, 'node registry refresh failed'));
    }, this.refreshMs);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.unsubscribe?.();
  }

  async reloadAll(): Promise<void> {
    const { rows } = await this.db.pool.query<NodeRow>(SELECT);
    this.nodes = new Map(rows.map((r) => [r.node_id, toInfo(r)]));
  }

  /** Re-reads one node; called on a change message and by the local writer right after its commit. */
  async reloadNode(nodeId: string): Promise<void> {
    const { rows } = await this.db.pool.query<NodeRow>(`${SELECT} WHERE node_id = $1`, [nodeId]);
    if (rows[0]) this.nodes.set(nodeId, toInfo(rows[0]));
    else this.nodes.delete(nodeId);
  }

  /** A change message is not repeated, so a failed re-read (database busy or restarting) is retried a few times. */
  private reloadWithRetry(nodeId: string, attemptsLeft: number): void {
    this.reloadNode(nodeId).catch((err: unknown) => {
      if (attemptsLeft <= 1) {
        this.logger.warn({ err, nodeId }, 'node registry reload failed; the periodic refresh will pick the change up');
        return;
      }
      setTimeout(() => this.reloadWithRetry(nodeId, attemptsLeft - 1), 1000).unref();
    });
  }

  /** Called by the metadata service after it commits a change: updates this instance now and tells the others. */
  async announce(nodeId: string): Promise<void> {
    await this.reloadNode(nodeId);
    await this.pubsub.publish(METADATA_CHANGED_CHANNEL, nodeId);
  }
}
