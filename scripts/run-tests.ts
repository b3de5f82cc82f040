/**
 * `npm test`: runs every test file with node:test against a real PostgreSQL.
 * With DATABASE_URL set it uses that server; without, it starts an embedded PostgreSQL in a
 * temporary folder for the run. Redis tests run when REDIS_URL is set and skip otherwise.
 * A migrated template database is made once; each test file copies it.
 * Extra arguments are test files or folders (default: test/).
 */
import { spawn } from 'node:child_process';
import { chmod, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { startEmbeddedPostgres, type EmbeddedDatabase } from '../src/db/embedded.js';
import { createTemplateDatabase, dropTemplateDatabase } from '../test/support/databases.js';

async function collect(target: string): Promise<string[]> {
  const s = await stat(target);
  if (s.isFile()) return [target];
  const out: string[] = [];
  for (const entry of await readdir(target, { withFileTypes: true })) {
    const p = path.join(target, entry.name);
    if (entry.isDirectory()) out.push(...(await collect(p)));
    else if (entry.name.endsWith('.test.ts')) out.push(p);
  }
  return out.sort();
}

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  const files = (await Promise.all((args.length ? args : ['test']).map(collect))).flat();
  let embedded: EmbeddedDatabase | undefined;
  let tmp: string | undefined;
  let serverUrl = process.env.DATABASE_URL;
  if (!serverUrl) {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'vpp-test-pg-'));
    await chmod(tmp, 0o755); // the unprivileged postgres user must reach the cluster folder inside
    process.stdout.write(`DATABASE_URL unset: starting an embedded PostgreSQL in ${tmp}\n`);
    embedded = await startEmbeddedPostgres({ dir: path.join(tmp, 'pg'), database: 'postgres' });
    serverUrl = embedded.url;
  }
  if (!process.env.REDIS_URL) process.stdout.write('REDIS_URL unset: Redis-backed tests will be skipped\n');
  const template = await createTemplateDatabase(serverUrl);
  try {
    const code = await new Promise<number>((resolve) => {
      const child = spawn(
        process.execPath,
        ['--import', 'tsx', '--test', `--test-concurrency=${process.env.TEST_CONCURRENCY ?? '2'}`, ...files],
        { stdio: 'inherit', env: { ...process.env, DATABASE_URL: serverUrl, TEST_TEMPLATE_DATABASE: template } },
      );
      child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0)));
    });
    return code;
  } finally {
    await dropTemplateDatabase(serverUrl, template).catch((err: unknown) => console.error('could not drop template database:', err));
    await embedded?.stop();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
