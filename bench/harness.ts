/** Helpers shared by benchmark sections: statistics, timing, a fresh migrated database, and a listening service on it. */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { Redis } from 'ioredis';
import { loadConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { createContainer, type Container } from '../src/container.js';
import { buildApp } from '../src/app.js';
import { createTestDatabase, dropDatabase } from '../test/support/databases.js';

export interface BenchContext {
  /** PostgreSQL server URL (any database on it); sections create their own databases. */
  serverUrl: string;
  redisUrl: string | undefined;
  /** Repetitions for "median of several runs" figures. */
  runs: number;
  /** Creates a fresh migrated database; dropped when the run ends. */
  freshDatabase(): Promise<string>;
  /** Drops a database made by freshDatabase now (its background work, e.g. autovacuum, ends with it). */
  dropDatabase(url: string): Promise<void>;
  /** Records one figure for the summary. */
  report(section: string, name: string, value: number, unit: string, note?: string): void;
}

export interface BenchSection {
  name: string;
  run(ctx: BenchContext): Promise<void>;
}

export interface BenchServerOptions {
  /** Short name for the temporary folder and the Redis key prefix. */
  name: string;
  /** API key with the `admin` scope the section sends. */
  apiKey: string;
  /** Redis for cache and pub/sub; unset uses the in-process implementations. */
  redisUrl?: string;
  /** Further environment on top of the bench defaults (warn-level logs to a temporary folder, no rate limit). */
  env?: Record<string, string>;
}

export interface BenchServer {
  /** `http://127.0.0.1:<port>` of the listening app. */
  baseUrl: string;
  app: FastifyInstance;
  container: Container;
  /** GET `path` with the admin key over keep-alive fetch; throws unless the answer is 200. */
  get(path: string): Promise<{ body: string; headers: Headers }>;
  /** Closes the app and the container and removes the temporary folder. */
  close(): Promise<void>;
}

/** Builds config, logger, container and app on `databaseUrl`, starts the container and listens on 127.0.0.1, port 0. */
export async function startBenchServer(databaseUrl: string, opts: BenchServerOptions): Promise<BenchServer> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), `vpp-bench-${opts.name}-`));
  let container: Container | undefined;
  let app: FastifyInstance | undefined;
  const close = async () => {
    await app?.close();
    await container?.close();
    await rm(tmp, { recursive: true, force: true });
  };
  try {
    const config = loadConfig({
      DATABASE_URL: databaseUrl,
      REDIS_URL: opts.redisUrl,
      API_KEYS: `${opts.apiKey}=admin`,
      LOG_DIR: tmp,
      DATA_DIR: tmp,
      LOG_LEVEL: 'warn',
      RATE_LIMIT_PER_MINUTE: '0',
      ...opts.env,
    });
    const logger = createLogger(config, { stdout: false });
    container = await createContainer(config, logger, { keyPrefix: `bench-${opts.name}-${process.pid}-${Date.now()}:`, defaultMetrics: false });
    app = await buildApp(container);
    await container.start();
    await app.listen({ host: '127.0.0.1', port: 0 });
    const addr = app.server.address();
    if (!addr || typeof addr !== 'object') throw new Error('no listening address');
    const baseUrl = `http://127.0.0.1:${addr.port}`;
    const headers = { authorization: `Bearer ${opts.apiKey}` };
    const get = async (p: string) => {
      const res = await fetch(baseUrl + p, { headers });
      const body = await res.text();
      if (res.status !== 200) throw new Error(`${p}: ${res.status} ${body.slice(0, 200)}`);
      return { body, headers: res.headers };
    };
    return { baseUrl, app, container, get, close };
  } catch (err) {
    await close().catch(() => undefined);
    throw err;
  }
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const idx = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[idx];
}

/** Runs `fn` `n` times sequentially; returns each latency in ms. */
export async function latencies(n: number, fn: (i: number) => Promise<unknown>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn(i);
    out.push(performance.now() - t0);
  }
  return out;
}

export { rng } from '../test/support/rng.js';

export async function makeContext(serverUrl: string, redisUrl: string | undefined, runs: number) {
  const created: string[] = [];
  const results: { section: string; name: string; value: number; unit: string; note?: string }[] = [];
  const ctx: BenchContext = {
    serverUrl,
    redisUrl,
    runs,
    async freshDatabase() {
      const url = await createTestDatabase(serverUrl);
      created.push(url);
      return url;
    },
    async dropDatabase(url) {
      const i = created.indexOf(url);
      if (i >= 0) created.splice(i, 1);
      await dropDatabase(url);
    },
    report(section, name, value, unit, note) {
      results.push({ section, name, value, unit, note });
      console.log(`  ${section} | ${name}: ${Number.isFinite(value) ? round(value) : value} ${unit}${note ? `  (${note})` : ''}`);
    },
  };
  return {
    ctx,
    results,
    async cleanup() {
      for (const url of created) await dropDatabase(url).catch(() => undefined);
      // Every section's service uses a `bench-…` key prefix; leave the shared Redis as it was.
      if (redisUrl) await deleteKeys(redisUrl, 'bench-*').catch(() => undefined);
    },
  };
}

async function deleteKeys(redisUrl: string, pattern: string): Promise<void> {
  const r = new Redis(redisUrl);
  try {
    let cursor = '0';
    do {
      const [next, keys] = await r.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      cursor = next;
      if (keys.length) await r.del(...keys);
    } while (cursor !== '0');
  } finally {
    r.disconnect();
  }
}

export function round(v: number): number {
  if (Math.abs(v) >= 100) return Math.round(v);
  if (Math.abs(v) >= 1) return Math.round(v * 100) / 100;
  return Math.round(v * 10000) / 10000;
}

/**
 * CPU time spent while a phase runs, in core-seconds: this process (service, load generator and
 * everything else in it) and the rest of the machine (mostly PostgreSQL), from /proc/stat.
 * Lets a figure be read as "where did the two cores go".
 */
export interface CpuSplit {
  wallSeconds: number;
  processSeconds: number;
  othersSeconds: number;
}

function machineBusySeconds(): number {
  try {
    // Linux: first line of /proc/stat, jiffies (USER_HZ = 100): user nice system idle iowait irq softirq steal.
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0];
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    const busy = f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0);
    return busy / 100;
  } catch {
    return NaN;
  }
}

export function cpuMeter(): () => CpuSplit {
  const t0 = performance.now();
  const p0 = process.cpuUsage();
  const m0 = machineBusySeconds();
  return () => {
    const p = process.cpuUsage(p0);
    const processSeconds = (p.user + p.system) / 1e6;
    return { wallSeconds: (performance.now() - t0) / 1000, processSeconds, othersSeconds: Math.max(0, machineBusySeconds() - m0 - processSeconds) };
  };
}
