import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip } from 'node:zlib';
import type pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { DAY_MS, partitionDay } from './partitions.js';

/** What an archive holds; written beside it as `<name>.manifest.json`. */
export interface ArchiveManifest {
  format: 'vpp-telemetry-archive/1';
  /** The partition (table) the rows came from, e.g. `telemetry_20261001`. */
  partition: string;
  /** File name of the gzip CSV, relative to the manifest's folder. */
  file: string;
  /** Columns in CSV order (the header line), snake_case as in the `telemetry` table. */
  columns: string[];
  rowCount: number;
  nodeCount: number;
  /** Range the partition covers (RFC 3339, half-open [from, to)); null for a table that is not a daily partition. */
  partitionFrom: string | null;
  partitionTo: string | null;
  /** Earliest and latest measurement time in the file (RFC 3339, both inclusive); null when empty. */
  minTs: string | null;
  maxTs: string | null;
  /** SHA-256 (hex) of the gzip file's bytes. */
  sha256: string;
  /** Size of the gzip file in bytes. */
  bytes: number;
  createdAt: string;
}

/** Passes bytes through while hashing and counting them. */
function hashTap(hash: ReturnType<typeof createHash>, counter: { bytes: number }): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      counter.bytes += chunk.length;
      cb(null, chunk);
    },
  });
}

/**
 * Counts CSV records (lines outside quoted fields), so a newline inside a quoted value
 * (free-form `extra` JSON, say) is not miscounted. Constant memory.
 */
class CsvRecordCounter extends Writable {
  records = 0;
  private inQuotes = false;
  private lastByte = 0x0a;

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i];
      // A doubled quote inside a quoted field toggles twice: net unchanged, as it should be.
      if (b === 0x22) this.inQuotes = !this.inQuotes;
      else if (b === 0x0a && !this.inQuotes) this.records++;
      this.lastByte = b;
    }
    cb();
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (this.lastByte !== 0x0a) this.records++;
    cb();
  }
}

export function manifestPathFor(archiveFile: string): string {
  return archiveFile.replace(/\.csv\.gz$/, '') + '.manifest.json';
}

/** SHA-256 (hex) and size of a file, read as a stream. */
export async function fileChecksum(file: string): Promise<{ sha256: string; bytes: number }> {
  const hash = createHash('sha256');
  const counter = { bytes: 0 };
  await pipeline(createReadStream(file), hashTap(hash, counter), new Writable({ write: (_c, _e, cb) => cb() }));
  return { sha256: hash.digest('hex'), bytes: counter.bytes };
}

/**
 * Reads the file back: checksum and size first (a damaged file is reported as such, not as
 * whatever gunzip trips over), then the number of CSV data rows. Throws on any mismatch.
 */
export async function verifyArchive(file: string, manifest: ArchiveManifest): Promise<void> {
  const { sha256, bytes } = await fileChecksum(file);
  if (sha256 !== manifest.sha256) throw new Error(`archive ${file}: checksum ${sha256} does not match manifest ${manifest.sha256}`);
  if (bytes !== manifest.bytes) throw new Error(`archive ${file}: ${bytes} bytes, manifest says ${manifest.bytes}`);
  const records = new CsvRecordCounter();
  await pipeline(createReadStream(file), createGunzip(), records);
  const rows = records.records - 1; // header line
  if (rows !== manifest.rowCount) throw new Error(`archive ${file}: ${rows} rows, manifest says ${manifest.rowCount}`);
}

async function fsyncPath(p: string): Promise<void> {
  const fh = await open(p, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/**
 * Archives one table (a raw-telemetry partition, normally already detached so nothing writes
 * to it) to `dir/<table>.csv.gz` with a manifest beside it, streamed with COPY TO STDOUT so
 * memory stays constant whatever the size. The file is written under a temporary name, synced,
 * read back and verified against the manifest before either takes its final name.
 */
export async function archiveTable(pool: pg.Pool, table: string, dir: string): Promise<ArchiveManifest> {
  await mkdir(dir, { recursive: true });
  const client = await pool.connect();
  try {
    const cols = await client.query<{ name: string }>(
      `SELECT attname AS name FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`,
      [quoteIdent(table)],
    );
    const columns = cols.rows.map((r) => r.name);
    if (columns.length === 0) throw new Error(`table ${table} not found`);
    // Counted in the same snapshot as the COPY so the manifest and the file agree even if a write slipped in.
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    const stats = await client.query<{ rows: number; nodes: number; min_ts: Date | null; max_ts: Date | null }>(
      `SELECT count(*)::bigint AS rows, count(DISTINCT node_id)::int AS nodes, min(ts) AS min_ts, max(ts) AS max_ts FROM ${quoteIdent(table)}`,
    );
    const file = path.join(dir, `${table}.csv.gz`);
    const tmp = `${file}.partial`;
    const hash = createHash('sha256');
    const counter = { bytes: 0 };
    const copy = client.query(copyTo(`COPY ${quoteIdent(table)} (${columns.map(quoteIdent).join(', ')}) TO STDOUT WITH (FORMAT csv, HEADER true)`));
    await pipeline(copy, createGzip({ level: 6 }), hashTap(hash, counter), createWriteStream(tmp));
    await client.query('COMMIT');
    await fsyncPath(tmp);

    const day = partitionDay(table);
    const s = stats.rows[0];
    const manifest: ArchiveManifest = {
      format: 'vpp-telemetry-archive/1',
      partition: table,
      file: path.basename(file),
      columns,
      rowCount: Number(s.rows),
      nodeCount: s.nodes,
      partitionFrom: day === undefined ? null : new Date(day).toISOString(),
      partitionTo: day === undefined ? null : new Date(day + DAY_MS).toISOString(),
      minTs: s.min_ts ? s.min_ts.toISOString() : null,
      maxTs: s.max_ts ? s.max_ts.toISOString() : null,
      sha256: hash.digest('hex'),
      bytes: counter.bytes,
      createdAt: new Date().toISOString(),
    };
    await verifyArchive(tmp, manifest);
    const manifestFile = manifestPathFor(file);
    await writeFileSynced(`${manifestFile}.partial`, JSON.stringify(manifest, null, 2) + '\n');
    await rename(tmp, file);
    await rename(`${manifestFile}.partial`, manifestFile);
    await fsyncPath(dir);
    return manifest;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

async function writeFileSynced(file: string, text: string): Promise<void> {
  const fh = await open(file, 'w');
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function readManifest(archiveFile: string): Promise<ArchiveManifest> {
  const m = JSON.parse(await readFile(manifestPathFor(archiveFile), 'utf8')) as ArchiveManifest;
  if (m.format !== 'vpp-telemetry-archive/1') throw new Error(`${manifestPathFor(archiveFile)}: unknown archive format ${String(m.format)}`);
  return m;
}

export interface RestoreResult {
  /** Rows in the archive. */
  rows: number;
  /** Rows inserted now; the rest were already present (restore is idempotent). */
  inserted: number;
}

/**
 * Loads an archive back into `telemetry` after checking it against its manifest. Existing
 * readings win (ON CONFLICT DO NOTHING), so running it twice inserts nothing the second time.
 * The partitions the rows need are created. One transaction: all or nothing.
 */
export async function restoreArchive(pool: pg.Pool, archiveFile: string): Promise<RestoreResult> {
  const manifest = await readManifest(archiveFile);
  await stat(archiveFile);
  await verifyArchive(archiveFile, manifest);
  const cols = manifest.columns.map(quoteIdent).join(', ');
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    if (manifest.minTs && manifest.maxTs) {
      await client.query(
        `SELECT ensure_telemetry_partition(d::date) FROM generate_series(($1::timestamptz AT TIME ZONE 'UTC')::date, ($2::timestamptz AT TIME ZONE 'UTC')::date, interval '1 day') AS d`,
        [manifest.minTs, manifest.maxTs],
      );
    }
    await client.query('CREATE TEMP TABLE restore_rows (LIKE telemetry INCLUDING DEFAULTS) ON COMMIT DROP');
    await pipeline(createReadStream(archiveFile), createGunzip(), client.query(copyFrom(`COPY restore_rows (${cols}) FROM STDIN WITH (FORMAT csv, HEADER true)`)));
    const inserted = await client.query(`INSERT INTO telemetry (${cols}) SELECT ${cols} FROM restore_rows ON CONFLICT (node_id, ts) DO NOTHING`);
    await client.query('COMMIT');
    return { rows: manifest.rowCount, inserted: inserted.rowCount ?? 0 };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

/** Removes a half-written archive left by an interrupted run. */
export async function removePartial(dir: string, table: string): Promise<void> {
  const file = path.join(dir, `${table}.csv.gz`);
  await rm(`${file}.partial`, { force: true });
  await rm(`${manifestPathFor(file)}.partial`, { force: true });
}
