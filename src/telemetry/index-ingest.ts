import type { Domain, Infra } from '../container.js';
import { createIngestMetrics, TelemetryIngestService } from './ingest-service.js';
import { telemetryIngestRoutes } from './ingest-routes.js';
import { LatestStore } from './latest.js';
import type { IngestQueue } from './queue.js';
import { PostgresQueue } from './queue-postgres.js';
import { RedisQueue } from './queue-redis.js';
import { GroupCommitWriter, PartitionCache, storedWithArrival, type WriteResult, type WriterHooks } from './writer.js';

/**
 * Telemetry ingestion: single and batch writes through group commit, the async queue (Redis
 * Streams with REDIS_URL, else a PostgreSQL table) and latest values.
 */
export function createTelemetryIngestDomain(infra: Infra): Domain & { service: TelemetryIngestService; queue: IngestQueue; writer: GroupCommitWriter; latest: LatestStore } {
  const { config, db, logger } = infra;
  const metrics = createIngestMetrics(infra.metrics);
  const partitions = new PartitionCache(db);
  const latest = new LatestStore(db, infra.metrics, infra.redis, infra.keyPrefix);

  // The service is built after the writer and queue it uses; the hooks reach it late.
  const late: { service?: TelemetryIngestService } = {};
  const hooks: WriterHooks = {
    afterCommit: (r: WriteResult) => latest.putAll(r.latest),
    published: (r, rows, seconds) => late.service?.published(r, rows, seconds),
  };
  const writer = new GroupCommitWriter(db, partitions, hooks, logger.child({ component: 'telemetry-writer' }));
  const queue: IngestQueue = infra.redis
    ? new RedisQueue(infra.redis, infra.keyPrefix, (rows) => writer.submit(rows), logger.child({ component: 'ingest-queue' }), { max: config.ingestQueueMax, storedAlready: (rows) => storedWithArrival(db.pool, rows) })
    : new PostgresQueue(db, partitions, hooks, logger.child({ component: 'ingest-queue' }), { max: config.ingestQueueMax });
  const service = new TelemetryIngestService({
    nodes: infra.nodes,
    writer,
    queue,
    latest,
    pubsub: infra.pubsub,
    metrics,
    logger,
    acceptUnknownNodes: config.unknownNodes === 'accept',
    retentionDays: config.retentionTelemetryDays,
  });
  late.service = service;

  let lastStats = { depth: 0, lagSeconds: 0 };
  const refreshStats = async () => {
    lastStats = await queue.stats().catch(() => lastStats);
    return lastStats;
  };
  infra.metrics.gauge('telemetry_ingest_queue_depth_readings', 'Readings in the async ingestion queue', async () => (await refreshStats()).depth);
  infra.metrics.gauge('telemetry_ingest_queue_lag_seconds', 'Age of the oldest entry in the async ingestion queue', () => lastStats.lagSeconds);

  return {
    service,
    queue,
    writer,
    latest,
    routes: telemetryIngestRoutes(service),
    health: { queue: () => queue.health() },
    async start() {
      await queue.start();
    },
    async stop() {
      // Consumers first (they feed the writer), then everything buffered is written.
      await queue.stop();
      await writer.drain();
    },
  };
}
