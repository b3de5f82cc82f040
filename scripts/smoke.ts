/**
 * Smoke test of the embedded default, as a new user runs it: the compiled service with no
 * DATABASE_URL and no REDIS_URL, in a fresh DATA_DIR. Checks /health/ready, creates and reads
 * a node with the printed admin key, restarts, and checks the node survived.
 * Prints "N passed, N failed".
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

const PORT = 3900 + Math.floor(Math.random() * 90);
const BASE = `http://127.0.0.1:${PORT}`;
let passed = 0;
let failed = 0;

function check(name: string, ok: boolean, detail = ''): void {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? 'ok' : 'FAIL'} - ${name}${detail ? ` (${detail})` : ''}`);
}

async function startService(dataDir: string): Promise<{ child: ChildProcess; output: () => string; readyMs: number }> {
  const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(PORT), DATA_DIR: dataDir, LOG_DIR: path.join(dataDir, 'logs') };
  delete env.DATABASE_URL;
  delete env.DATABASE_READ_URL;
  delete env.REDIS_URL;
  delete env.API_KEYS;
  const t0 = Date.now();
  const child = spawn(process.execPath, ['dist/server.js'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (out += c.toString()));
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`service exited early:\n${out}`);
    try {
      const r = await fetch(`${BASE}/health/ready`);
      if (r.status === 200) return { child, output: () => out, readyMs: Date.now() - t0 };
    } catch {
      /* not listening yet */
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  child.kill('SIGKILL');
  throw new Error(`not ready within 60 s:\n${out}`);
}

async function stopService(child: ChildProcess): Promise<number | null> {
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  child.kill('SIGTERM');
  return exited;
}

async function main(): Promise<void> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'vpp-smoke-'));
  await chmod(dataDir, 0o755);
  try {
    const first = await startService(dataDir);
    check('cold start on the embedded default serves /health/ready', true, `${first.readyMs} ms`);
    const key = /Bearer (\S+)/.exec(first.output())?.[1];
    check('an admin key is generated and printed at first start', Boolean(key));
    const auth = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
    const node = { nodeId: 'smoke-01', name: 'Smoke node', type: 'battery', status: 'active', capacityKw: 500, timezone: 'Europe/Berlin' };
    const created = await fetch(`${BASE}/api/metadata`, { method: 'POST', headers: auth, body: JSON.stringify(node) });
    check('POST /api/metadata creates a node', created.status === 201, `status ${created.status}`);
    const read = await fetch(`${BASE}/api/metadata/smoke-01`, { headers: auth });
    check('GET /api/metadata/:nodeId reads it back', read.status === 200 && ((await read.json()) as { name?: string }).name === 'Smoke node');
    const code = await stopService(first.child);
    check('SIGTERM stops the service with exit code 0', code === 0, `exit ${code}`);

    const second = await startService(dataDir);
    check('restart reuses the embedded database', true, `${second.readyMs} ms`);
    check('no new key is generated on restart', !/Generated admin API key/.test(second.output()));
    const again = await fetch(`${BASE}/api/metadata/smoke-01`, { headers: auth });
    check('data survives a restart', again.status === 200, `status ${again.status}`);
    await stopService(second.child);
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
  console.log(`smoke: ${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

main().catch((err: unknown) => {
  console.error(err);
  console.log(`smoke: ${passed} passed, ${failed + 1} failed`);
  process.exit(1);
});
