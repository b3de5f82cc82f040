/**
 * Dependencies and service processes a test owns: its own PostgreSQL cluster and redis-server
 * on free ports (never the shared ones, which other tests use), and `src/server.ts` run as a
 * real process, so fault tests can stop, kill and restart each of them.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, startEmbeddedPostgres, type EmbeddedDatabase } from '../../src/db/embedded.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `fn` every `everyMs` until it returns true; returns the ms it took, or throws after `timeoutMs`. */
export async function waitFor(what: string, fn: () => Promise<boolean>, timeoutMs = 15_000, everyMs = 50): Promise<number> {
  const t0 = performance.now();
  for (;;) {
    if (await fn().catch(() => false)) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** A PostgreSQL 15 cluster of the test's own in a temporary folder, stoppable and restartable on the same port. */
export interface OwnPostgres {
  /** URL of database `vpp` (created at first start). */
  url: string;
  port: number;
  running: boolean;
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Stops it and removes its folder. */
  destroy(): Promise<void>;
}

export async function startOwnPostgres(): Promise<OwnPostgres> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'vpp-fault-pg-'));
  await chmod(tmp, 0o755); // PostgreSQL runs as the unprivileged postgres user and must reach its folder
  const dir = path.join(tmp, 'pg');
  const port = await freePort();
  let db: EmbeddedDatabase | undefined = await startEmbeddedPostgres({ dir, port });
  const self: OwnPostgres = {
    url: db.url,
    port,
    running: true,
    async stop() {
      await db?.stop();
      db = undefined;
      self.running = false;
    },
    async start() {
      db = await startEmbeddedPostgres({ dir, port });
      self.running = true;
    },
    async destroy() {
      await self.stop().catch(() => undefined);
      await rm(tmp, { recursive: true, force: true });
    },
  };
  return self;
}

/** A redis-server of the test's own (no persistence), stoppable and restartable on the same port. */
export interface OwnRedis {
  url: string;
  port: number;
  stop(): Promise<void>;
  start(): Promise<void>;
}

export async function startOwnRedis(): Promise<OwnRedis> {
  const port = await freePort();
  let proc: ChildProcess | undefined;
  const start = async () => {
    const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--daemonize', 'no'], { stdio: ['ignore', 'pipe', 'pipe'] });
    proc = child;
    await new Promise<void>((resolve, reject) => {
      let out = '';
      const onData = (b: Buffer) => {
        out += b.toString();
        if (out.includes('Ready to accept connections')) {
          child.stdout?.off('data', onData);
          child.stdout?.resume();
          resolve();
        }
      };
      child.stdout?.on('data', onData);
      child.stderr?.resume();
      child.once('exit', (code) => reject(new Error(`redis-server exited (${code}): ${out.slice(-500)}`)));
      child.once('error', reject);
    });
  };
  await start();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    start,
    async stop() {
      const p = proc;
      proc = undefined;
      if (!p || p.exitCode !== null) return;
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGKILL');
      await exited;
    },
  };
}

/** The service run as its own process (`node --import tsx src/server.ts`). */
export interface ServiceProcess {
  url: string;
  port: number;
  proc: ChildProcess;
  /** Everything it wrote to stdout and stderr so far. */
  output(): string;
  /** Resolves with the exit code (null when killed by a signal) and signal. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal: NodeJS.Signals): void;
}

/**
 * Starts the service with `env` on a free port and waits until `/health/ready` answers 200
 * (or `waitReady: false`). The process inherits nothing from the shared DATABASE_URL/REDIS_URL:
 * pass them in `env`.
 */
export async function startService(env: Record<string, string>, opts: { port?: number; waitReady?: boolean; timeoutMs?: number } = {}): Promise<ServiceProcess> {
  const port = opts.port ?? (await freePort());
  const base: Record<string, string | undefined> = { ...process.env };
  for (const k of ['DATABASE_URL', 'DATABASE_READ_URL', 'REDIS_URL', 'TEST_TEMPLATE_DATABASE', 'NODE_TEST_CONTEXT']) delete base[k];
  const proc = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    cwd: ROOT,
    env: { ...base, HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout?.on('data', (b: Buffer) => (out = (out + b.toString()).slice(-20_000)));
  proc.stderr?.on('data', (b: Buffer) => (out = (out + b.toString()).slice(-20_000)));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  const url = `http://127.0.0.1:${port}`;
  const svc: ServiceProcess = { url, port, proc, output: () => out, exited, kill: (s) => void proc.kill(s) };
  if (opts.waitReady !== false) {
    let dead = false;
    void exited.then(() => (dead = true));
    const deadline = performance.now() + (opts.timeoutMs ?? 60_000);
    for (;;) {
      if (dead) throw new Error(`service exited during start-up:\n${out}`);
      const ok = await fetch(`${url}/health/ready`, { signal: AbortSignal.timeout(1000) }).then((r) => r.status === 200, () => false);
      if (ok) break;
      if (performance.now() > deadline) {
        proc.kill('SIGKILL');
        throw new Error(`service on ${url} not ready in time\n--- service output ---\n${out}`);
      }
      await sleep(100);
    }
  }
  return svc;
}

/** Stops a service process if it still runs: SIGTERM, then SIGKILL after `graceMs`. */
export async function stopService(svc: ServiceProcess | undefined, graceMs = 10_000): Promise<void> {
  if (!svc || svc.proc.exitCode !== null || svc.proc.signalCode !== null) return;
  svc.kill('SIGTERM');
  const timer = setTimeout(() => svc.kill('SIGKILL'), graceMs);
  await svc.exited;
  clearTimeout(timer);
}
