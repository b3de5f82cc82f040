import type { FastifyPluginAsync } from 'fastify';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { Config } from './config.js';
import { MemoryCache, MemoryPubSub } from './cache/memory.js';
import { RedisCache, RedisPubSub, createRedisClient } from './cache/redis.js';
import type { Cache, HealthCheck, PubSub } from './cache/types.js';
import { createDb, type Db } from './db/pool.js';
import { readMigrations } from './db/migrate.js';
import { loadKeyRing, type KeyRing } from './http/auth.js';
import { Metrics } from './metrics/metrics.js';
import { JobRunner } from './jobs/runner.js';
import { NodeRegistry } from './metadata/registry.js';
import { createTelemetryIngestDomain } from './telemetry/index-ingest.js';
import { createTelemetryExportDomain } from './telemetry/index-quality.js';
import { createTelemetryQueryDomain } from './telemetry/index-query.js';
import { createMetadataDomain } from './metadata/index.js';
import { createOperationsDomain } from './operations/index.js';
import { createRealtimeDomain } from './realtime/index.js';
import { createTransactionsDomain } from './transactions/index.js';
import { createAnalyticsDomain } from './analytics/index.js';

/** Shared infrastructure every domain is built from. */
export interface Infra {
  config: Readonly<Config>;
  logger: Logger;
  db: Db;
  cache: Cache;
  pubsub: PubSub;
  /** Present when REDIS_URL is set: the command connection, for domains that need Redis itself (queue, rate limits). */
  redis?: Redis;
  /** Prefix of every Redis key and channel this instance uses. */
  keyPrefix: string;
  metrics: Metrics;
  /** Maintenance jobs (advisory-lock leadership across instances). Domains register theirs. */
  jobs: JobRunner;
  /** Every node's hot-path facts in memory, kept current across instances. */
  nodes: NodeRegistry;
}

/** A domain's contribution to the service. */
export interface Domain {
  /** Route plugin registered under the app root. */
  routes?: FastifyPluginAsync;
  /** Named checks shown in `/health` (`database` is built in). */
  health?: Record<string, () => Promise<HealthCheck>>;
  /** Starts background work (called once the app is ready). */
  start?(): Promise<void>;
  /** Stops background work and flushes what is buffered; called before pools close. */
  stop?(): Promise<void>;
}

export interface Container extends Infra {
  keyRing: KeyRing;
  /** Migration names the code expects applied (readiness). */
  expectedMigrations: string[];
  domains: Domain[];
  startedAt: number;
  start(): Promise<void>;
  close(): Promise<void>;
}

export interface ContainerOptions {
  /** Database URL to use instead of `config.databaseUrl` (the embedded database's). */
  databaseUrl?: string;
  /** Redis key prefix instead of `config.redisKeyPrefix` (tests: one per app). */
  keyPrefix?: string;
  /** Receives the generated admin key on first start. */
  announceKey?: (key: string) => void;
  /** Default-process metrics (event loop, memory); off in tests that build many apps. */
  defaultMetrics?: boolean;
}

/** Wires infrastructure and domains with plain constructors. The caller runs migrations first. */
export async function createContainer(config: Readonly<Config>, logger: Logger, opts: ContainerOptions = {}): Promise<Container> {
  const url = opts.databaseUrl ?? config.databaseUrl;
  if (!url) throw new Error('no database URL: set DATABASE_URL or start the embedded database first');
  const readUrl = opts.databaseUrl && !config.databaseUrl ? opts.databaseUrl : config.databaseReadUrl;
  const db = createDb(url, readUrl, { onError: (err) => logger.warn({ err }, 'idle database connection lost') });
  const keyPrefix = opts.keyPrefix ?? config.redisKeyPrefix;
  const metrics = new Metrics({ defaults: opts.defaultMetrics });

  let redis: Redis | undefined;
  let subscriber: Redis | undefined;
  let cache: Cache;
  let pubsub: PubSub;
  if (config.redisUrl) {
    let lastLogged = 0;
    const onError = (err: Error) => {
      // ioredis reports every failed reconnect; one line per 10 s is enough.
      if (Date.now() - lastLogged > 10_000) {
        lastLogged = Date.now();
        logger.warn({ err: err.message }, 'redis connection error');
      }
    };
    redis = createRedisClient({ url: config.redisUrl, onError });
    subscriber = createRedisClient({ url: config.redisUrl, onError }, 'subscriber');
    cache = new RedisCache(redis, keyPrefix);
    pubsub = new RedisPubSub(redis, subscriber, keyPrefix);
  } else {
    cache = new MemoryCache();
    pubsub = new MemoryPubSub();
  }

  const jobs = new JobRunner(db, logger, metrics);
  const nodes = new NodeRegistry(db, pubsub, logger);
  const infra: Infra = { config, logger, db, cache, pubsub, redis, keyPrefix, metrics, jobs, nodes };
  const keyRing = await loadKeyRing(db.pool, config.apiKeys, opts.announceKey ?? (() => undefined));
  const expectedMigrations = (await readMigrations()).map((m) => m.name);

  // Domains, in dependency order. Each is built from `infra` and the domains it uses.
  const domains: Domain[] = [];
  domains.push(createTelemetryIngestDomain(infra));
  domains.push(createTelemetryExportDomain(infra));
  domains.push(createTelemetryQueryDomain(infra));
  const metadata = createMetadataDomain(infra);
  domains.push(metadata);
  domains.push(createOperationsDomain(infra));
  domains.push(createRealtimeDomain(infra, { keyRing }));
  domains.push(createTransactionsDomain(infra));
  domains.push(createAnalyticsDomain(infra));

  let closed = false;
  return {
    ...infra,
    keyRing,
    expectedMigrations,
    domains,
    startedAt: Date.now(),
    async start() {
      // The command connection fails fast while it is not connected (no offline queue), so give it a
      // moment to connect before domains publish; a Redis that is down only degrades the service.
      if (redis && redis.status !== 'ready') await waitReady(redis, 3000);
      await nodes.start();
      for (const d of domains) await d.start?.();
      jobs.start();
    },
    async close() {
      if (closed) return;
      closed = true;
      await jobs.stop();
      for (const d of [...domains].reverse()) {
        await d.stop?.().catch((err: unknown) => logger.error({ err }, 'domain stop failed'));
      }
      await nodes.stop();
      await pubsub.close();
      await cache.close();
      redis?.disconnect();
      subscriber?.disconnect();
      await db.close();
    },
  };
}

/** Resolves when `client` is ready or after `timeoutMs`, whichever comes first. */
function waitReady(client: Redis, timeoutMs: number): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      client.off('ready', done);
      resolve();
    };
    const timer = setTimeout(done, timeoutMs);
    client.once('ready', done);
  });
}
