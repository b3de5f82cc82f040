/** Helpers shared by benchmark sections: statistics, timing, and a fresh migrated database. */
import { createTestDatabase, dropDatabase } from '../test/support/databases.js';

export interface BenchContext {
  /** PostgreSQL server URL (any database on it); sections create their own databases. */
  serverUrl: string;
  redisUrl: string | undefined;
  /** Repetitions for "median of several runs" figures. */
  runs: number;
  /** Creates a fresh migrated database; dropped when the run ends. */
  freshDatabase(): Promise<string>;
  /** Records one figure for the summary. */
  report(section: string, name: string, value: number, unit: string, note?: string): void;
}

export interface BenchSection {
  name: string;
  run(ctx: BenchContext): Promise<void>;
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

/** Deterministic PRNG (mulberry32) so every run generates the same fleet. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

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
    },
  };
}

export function round(v: number): number {
  if (Math.abs(v) >= 100) return Math.round(v);
  if (Math.abs(v) >= 1) return Math.round(v * 100) / 100;
  return Math.round(v * 10000) / 10000;
}
