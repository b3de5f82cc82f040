import type { TestApp } from './app.js';

export interface TestNode {
  nodeId: string;
  capacityKw?: number;
  intervalSeconds?: number;
  type?: string;
}

/** Inserts nodes straight into `nodes` (the metadata API is not needed) and reloads the registry. */
export async function insertNodes(t: TestApp, nodes: TestNode[]): Promise<void> {
  for (const n of nodes) {
    await t.container.db.pool.query(
      `INSERT INTO nodes (node_id, type, status, capacity_kw, timezone, telemetry_interval_seconds, doc)
       VALUES ($1, $2, 'active', $3, 'UTC', $4, '{}'::jsonb)`,
      [n.nodeId, n.type ?? 'battery', n.capacityKw ?? 1000, n.intervalSeconds ?? 60],
    );
  }
  await t.container.nodes.reloadAll();
}

/** A UTC minute boundary `minutesAgo` minutes before now, epoch ms. */
export function minutesAgo(minutes: number, now = Date.now()): number {
  return Math.floor(now / 60_000) * 60_000 - minutes * 60_000;
}
