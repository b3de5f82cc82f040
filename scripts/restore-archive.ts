/**
 * `npm run restore-archive -- <file.csv.gz> [more files...]`: loads raw-telemetry archives written
 * by the retention job back into `telemetry` (DATABASE_URL, or `.env`). Each file is checked against
 * its manifest (sha256, size, row count) first; readings already present are left as they are,
 * so running it twice is harmless. Exit code 0 only when every file was restored.
 */
import { loadConfig } from '../src/config.js';
import { createPool } from '../src/db/pool.js';
import { restoreArchive } from '../src/operations/archive.js';

async function main(): Promise<number> {
  const files = process.argv.slice(2).filter((a) => a !== '--');
  if (files.length === 0) {
    console.error('usage: npm run restore-archive -- <DATA_DIR/archive/telemetry_YYYYMMDD.csv.gz> [...]');
    return 2;
  }
  const config = loadConfig();
  if (!config.databaseUrl) {
    // The embedded database belongs to a running service (or none): point at it explicitly.
    console.error('restore-archive: DATABASE_URL is not set (for the embedded database, use the URL the service logs at start-up)');
    return 2;
  }
  const pool = createPool(config.databaseUrl, { max: 1, applicationName: 'vpp-restore-archive' });
  let failed = 0;
  try {
    for (const file of files) {
      const t0 = performance.now();
      try {
        const r = await restoreArchive(pool, file);
        console.log(`${file}: ${r.rows} rows in archive, ${r.inserted} inserted, ${r.rows - r.inserted} already present (${Math.round(performance.now() - t0)} ms)`);
      } catch (err) {
        failed++;
        console.error(`${file}: not restored: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
  } finally {
    await pool.end();
  }
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  },
);
