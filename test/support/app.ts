import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify';
import { Redis } from 'ioredis';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { createContainer, type Container } from '../../src/container.js';
import { buildApp, type AppOptions } from '../../src/app.js';
import { createTestDatabase, dropDatabase, uniqueName } from './databases.js';

/** API keys every test app accepts, by scope. */
export const KEYS = {
  admin: 'test-admin-key-0001',
  read: 'test-read-key-0001',
  telemetry: 'test-telemetry-key-0001',
  transactions: 'test-transactions-key-0001',
  metadata: 'test-metadata-key-0001',
  writer: 'test-writer-key-0001',
} as const;

const API_KEYS = [
  `${KEYS.admin}=admin`,
  `${KEYS.read}=read`,
  `${KEYS.telemetry}=telemetry:write`,
  `${KEYS.transactions}=transactions:write`,
  `${KEYS.metadata}=metadata:write`,
  `${KEYS.writer}=telemetry:write+transactions:write+metadata:write+read`,
].join(',');

export type Backend = 'memory' | 'redis';

/** The cache/pub-sub backends to run a suite against: in-process always, Redis when REDIS_URL is set. */
export function backends(): Backend[] {
  return process.env.REDIS_URL ? ['memory', 'redis'] : ['memory'];
}

export const redisSkip = process.env.REDIS_URL ? false : 'REDIS_URL is not set: this test needs a real Redis';

export interface TestApp {
  app: FastifyInstance;
  container: Container;
  databaseUrl: string;
  keyPrefix: string;
  /** Folder of this app's log files (combined.log, error.log). */
  logDir: string;
  /** `app.inject` with the admin key unless `key` says otherwise (`key: null` sends none). */
  request(opts: InjectOptions & { key?: string | null }): Promise<LightMyRequestResponse>;
  close(): Promise<void>;
}

export interface TestAppOptions {
  backend?: Backend;
  /** Environment overrides, as the service would read them. */
  env?: Record<string, string>;
  /** Reuse a database (e.g. a second instance on the same data); else a fresh one is created and dropped. */
  databaseUrl?: string;
  /** Reuse a Redis key prefix (a second instance sharing the first one's Redis data). */
  keyPrefix?: string;
  /** Options of buildApp (timeouts, body limit). */
  appOptions?: AppOptions;
}

/**
 * Builds the real app on its own fresh database (copied from the migrated template) and,
 * for the Redis backend, its own key prefix. `close()` removes both.
 */
export async function createTestApp(opts: TestAppOptions = {}): Promise<TestApp> {
  const serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) throw new Error('DATABASE_URL is not set: run the tests with `npm test`, which provides a database');
  const backend = opts.backend ?? 'memory';
  if (backend === 'redis' && !process.env.REDIS_URL) throw new Error('REDIS_URL is not set');
  const ownsDatabase = !opts.databaseUrl;
  const databaseUrl = opts.databaseUrl ?? (await createTestDatabase(serverUrl, process.env.TEST_TEMPLATE_DATABASE));
  const logDir = await mkdtemp(path.join(os.tmpdir(), 'vpp-test-logs-'));
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'vpp-test-data-'));
  const config = loadConfig({
    DATABASE_URL: databaseUrl,
    REDIS_URL: backend === 'redis' ? process.env.REDIS_URL : undefined,
    API_KEYS,
    LOG_DIR: logDir,
    DATA_DIR: dataDir,
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'warn',
    // Tests run the refresher when they want rollups built; a settle time would leave fresh marks.
    ROLLUP_SETTLE_SECONDS: '0',
    ...opts.env,
  });
  const logger = createLogger(config, { stdout: false });
  // A REDIS_KEY_PREFIX in `env` is left to the container to apply, as in production.
  const fromEnv = opts.keyPrefix === undefined && opts.env?.REDIS_KEY_PREFIX !== undefined;
  const keyPrefix = opts.keyPrefix ?? (fromEnv ? config.redisKeyPrefix : `${uniqueName('test')}:`);
  const container = await createContainer(config, logger, { keyPrefix: fromEnv ? undefined : keyPrefix, defaultMetrics: false });
  const app = await buildApp(container, opts.appOptions);
  await app.ready();
  await container.start();

  let closed = false;
  return {
    app,
    container,
    databaseUrl,
    keyPrefix,
    logDir,
    request({ key, ...req }) {
      const headers = { ...(req.headers ?? {}) } as Record<string, string>;
      const k = key === undefined ? KEYS.admin : key;
      if (k !== null) headers.authorization = `Bearer ${k}`;
      return app.inject({ ...req, headers });
    },
    async close() {
      if (closed) return;
      closed = true;
      await app.close();
      await container.close();
      if (backend === 'redis' && !opts.keyPrefix) await deleteRedisPrefix(keyPrefix);
      if (ownsDatabase) await dropDatabase(databaseUrl);
      await rm(logDir, { recursive: true, force: true });
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** Removes every Redis key under `prefix`. */
export async function deleteRedisPrefix(prefix: string): Promise<void> {
  if (!process.env.REDIS_URL) return;
  const r = new Redis(process.env.REDIS_URL);
  try {
    let cursor = '0';
    do {
      const [next, keys] = await r.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length) await r.del(...keys);
    } while (cursor !== '0');
  } finally {
    r.disconnect();
  }
}
