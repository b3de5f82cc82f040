/**
 * `npm run bench`: prints performance figures measured against a real PostgreSQL (not a test).
 *   BENCH_DATABASE_URL (or DATABASE_URL; default postgres://postgres@127.0.0.1:5432/postgres)
 *   BENCH_RUNS   repetitions per figure (median reported; default 3)
 *   BENCH_ONLY   comma list of section names to run (default: all)
 * Each section lives in bench/sections/ and creates its own databases.
 */
import { readdir, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import os from 'node:os';
import { makeContext, type BenchSection } from './harness.js';

async function main(): Promise<void> {
  const serverUrl = process.env.BENCH_DATABASE_URL ?? process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
  const redisUrl = process.env.BENCH_REDIS_URL ?? process.env.REDIS_URL;
  const runs = Number(process.env.BENCH_RUNS ?? 3);
  const only = process.env.BENCH_ONLY?.split(',').map((s) => s.trim()).filter(Boolean);
  const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'sections');
  const files = (await readdir(dir)).filter((f) => f.endsWith('.ts')).sort();
  console.log(`bench: ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}, ${runs} runs per figure`);
  console.log(`bench: PostgreSQL ${serverUrl.replace(/\/\/[^@]*@/, '//')}, Redis ${redisUrl ?? 'none'}`);
  const { ctx, results, cleanup } = await makeContext(serverUrl, redisUrl, runs);
  try {
    for (const f of files) {
      const mod = (await import(pathToFileURL(path.join(dir, f)).href)) as { section: BenchSection };
      const s = mod.section;
      if (only && !only.includes(s.name)) continue;
      console.log(`\n== ${s.name}`);
      const t0 = performance.now();
      await s.run(ctx);
      console.log(`   (${s.name} took ${Math.round((performance.now() - t0) / 1000)} s)`);
    }
  } finally {
    await cleanup();
  }
  await mkdir('.bench', { recursive: true });
  await writeFile('.bench/results.json', JSON.stringify({ at: new Date().toISOString(), runs, results }, null, 2));
  console.log('\nbench: figures written to .bench/results.json');
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
