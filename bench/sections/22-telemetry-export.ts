/**
 * Telemetry export: 1,000,000 readings (10 nodes × 100,000 one-second readings with the usual
 * fields) streamed over real HTTP, as NDJSON and as CSV. The server runs in this process; the
 * client runs in a child process and counts lines, so this process's RSS is the server's.
 * Reports rows/s (median of ctx.runs runs) and the server's peak RSS growth over the export
 * (sampled every 10 ms; the largest of all runs). Bar: peak RSS growth < 100 MB.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { loadConfig } from '../../src/config.js';
import { createLogger } from '../../src/logger.js';
import { createContainer } from '../../src/container.js';
import { buildApp } from '../../src/app.js';
import { median, type BenchContext, type BenchSection } from '../harness.js';

const KEY = 'bench-export-read-key';
const NODES = 10;
const PER_NODE = 100_000;
const START = Date.UTC(2026, 0, 5);
const BAR_MB = 100;

/** Streams the export and prints `{ status, bytes, lines, ms }`; run with `node -e`. */
const CLIENT = `
const http = require('node:http');
const [url, key] = process.argv.slice(1);
const t0 = performance.now();
http.get(url, { headers: { authorization: 'Bearer ' + key } }, (res) => {
  let bytes = 0, lines = 0;
  res.on('data', (c) => { bytes += c.length; for (let i = c.indexOf(10); i !== -1; i = c.indexOf(10, i + 1)) lines++; });
  res.on('end', () => process.stdout.write(JSON.stringify({ status: res.statusCode, bytes, lines, ms: performance.now() - t0 })));
  res.on('error', (e) => { console.error(e); process.exit(1); });
});
`;

async function seed(url: string): Promise<void> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query(
      `INSERT INTO nodes (node_id, type, status, capacity_kw, telemetry_interval_seconds, doc)
       SELECT 'export-node-' || n, 'battery', 'active', 1000, 1, '{}'::jsonb FROM generate_series(0, $1 - 1) n`,
      [NODES],
    );
    await c.query(
      `SELECT ensure_telemetry_partition(d::date) FROM generate_series($1::timestamptz::date, ($1::timestamptz + make_interval(secs => $2))::date, '1 day') d`,
      [new Date(START).toISOString(), PER_NODE],
    );
    // Deterministic values with the fields a site usually sends.
    await c.query(
      `INSERT INTO telemetry (node_id, ts, power_kw, voltage_v, frequency_hz, state_of_charge_pct, health_status, quality)
       SELECT 'export-node-' || n, $1::timestamptz + make_interval(secs => i),
              round(((i * 7919 + n * 104729) % 200000 - 100000) / 100.0, 2)::float8,
              398 + (i % 40) / 10.0, 49.95 + (i % 100) / 1000.0, (i % 1000) / 10.0, 'ok', 'measured'
         FROM generate_series(0, $3 - 1) n, generate_series(0, $2 - 1) i`,
      [new Date(START).toISOString(), PER_NODE, NODES],
    );
    await c.query('VACUUM ANALYZE telemetry');
  } finally {
    await c.end();
  }
}

function runClient(url: string): Promise<{ status: number; bytes: number; lines: number; ms: number }> {
  return new Promise((resolve, reject) =>
    execFile(process.execPath, ['-e', CLIENT, url, KEY], { maxBuffer: 1 << 20 }, (err, stdout) => (err ? reject(err) : resolve(JSON.parse(stdout) as never))),
  );
}

export const section: BenchSection = {
  name: 'telemetry-export',
  async run(ctx: BenchContext) {
    const url = await ctx.freshDatabase();
    const t0 = performance.now();
    await seed(url);
    console.log(`  seeded ${NODES * PER_NODE} readings in ${Math.round(performance.now() - t0)} ms`);

    const tmp = await mkdtemp(path.join(os.tmpdir(), 'vpp-bench-export-'));
    const config = loadConfig({ DATABASE_URL: url, API_KEYS: `${KEY}=read`, LOG_DIR: tmp, DATA_DIR: tmp, LOG_LEVEL: 'warn', RATE_LIMIT_PER_MINUTE: '0' });
    const logger = createLogger(config, { stdout: false });
    const container = await createContainer(config, logger, { keyPrefix: `bench-export-${process.pid}:`, defaultMetrics: false });
    const app = await buildApp(container, {});
    try {
      await app.listen({ port: 0, host: '127.0.0.1' });
      await container.start();
      const port = (app.server.address() as AddressInfo).port;
      const ids = Array.from({ length: NODES }, (_, n) => `export-node-${n}`).join(',');
      const exportUrl = (format: string) => `http://127.0.0.1:${port}/api/telemetry/export?nodeIds=${ids}&from=${START}&to=${START + PER_NODE * 1000}&format=${format}`;

      for (const format of ['ndjson', 'csv']) {
        const rates: number[] = [];
        let worstGrowth = 0;
        for (let run = 0; run < ctx.runs; run++) {
          const rss0 = process.memoryUsage().rss;
          let peak = rss0;
          const sampler = setInterval(() => {
            peak = Math.max(peak, process.memoryUsage().rss);
          }, 10);
          let r;
          try {
            r = await runClient(exportUrl(format));
          } finally {
            clearInterval(sampler);
          }
          const expectedLines = NODES * PER_NODE + (format === 'csv' ? 1 : 0);
          if (r.status !== 200 || r.lines !== expectedLines) throw new Error(`export ${format}: status ${r.status}, ${r.lines} lines, expected ${expectedLines}`);
          rates.push((NODES * PER_NODE) / (r.ms / 1000));
          worstGrowth = Math.max(worstGrowth, peak - rss0);
          console.log(`  ${format} run ${run + 1}: ${Math.round(r.ms)} ms, ${Math.round(r.bytes / 2 ** 20)} MiB, RSS growth ${Math.round((peak - rss0) / 2 ** 20)} MiB`);
        }
        const growthMb = worstGrowth / 1e6;
        ctx.report('telemetry-export', `${format} export of 1,000,000 readings`, median(rates), 'rows/s', `median of ${ctx.runs}`);
        ctx.report('telemetry-export', `${format} export peak server RSS growth`, growthMb, 'MB', `bar < ${BAR_MB} MB: ${growthMb < BAR_MB ? 'met' : 'NOT met'}`);
      }
    } finally {
      await app.close();
      await container.close();
      await rm(tmp, { recursive: true, force: true });
    }
  },
};
