/** SQL of analytics: settlement and dispatch chains, node lists, and the freshness fingerprints of cached answers. */
import type { Queryable } from '../db/pool.js';

const iso = (ms: number) => new Date(ms).toISOString();

/** Statuses whose chain counts for nothing (the settlement or dispatch did not happen). */
export const VOID_STATUSES: readonly string[] = ['rejected', 'failed'];

/**
 * A settlement or dispatch chain: its root record and the latest state of the records that
 * follow it up through `relatesTo` (see docs/analytics.md for which records count).
 */
export interface ChainFact {
  nodeId: string;
  kind: 'settlement' | 'dispatch';
  /** Timestamp of the chain's root record (epoch ms): the chain is attributed to the period containing it. */
  rootTs: number;
  /** Status of the chain's latest record (highest sequence). */
  status: string;
  /** amountEur of the latest record of the chain that has one (EUR, signed); null when none has. */
  amountEur: number | null;
}

/** Chains whose root record is of `nodeId` with a timestamp in `[lo, hi)` (epoch ms, half-open). */
export interface ChainWindow {
  nodeId: string;
  lo: number;
  hi: number;
}

/**
 * Roots: settlements whose relatesTo is absent or names a record that is neither a settlement
 * nor an adjustment; dispatches whose relatesTo is absent or names a non-dispatch. Members: the
 * root, then records relating to a member, of the root's type (plus adjustments for settlements).
 * `$1`/`$2`/`$3`: node ids and the half-open ranges of root timestamps, one window per node.
 */
const CHAINS_CTE = `WITH RECURSIVE roots AS (
  SELECT t.id, t.node_id, t.type, t.ts
  FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS w(node, lo, hi)
  JOIN transactions t ON t.node_id = w.node AND t.type IN ('settlement', 'dispatch') AND t.ts >= w.lo AND t.ts < w.hi
  LEFT JOIN transactions p ON p.id = t.relates_to
  WHERE NOT (p.id IS NOT NULL AND (p.type = t.type OR (t.type = 'settlement' AND p.type = 'adjustment')))
), members AS (
  SELECT r.id AS root_id, r.id, r.type AS root_type FROM roots r
  UNION ALL
  SELECT m.root_id, c.id, m.root_type
  FROM members m JOIN transactions c ON c.relates_to = m.id
  WHERE c.type = m.root_type OR (m.root_type = 'settlement' AND c.type = 'adjustment')
), chains AS (
  SELECT m.root_id,
         (array_agg(c.status ORDER BY c.sequence DESC))[1] AS status,
         (array_agg(c.amount_eur ORDER BY c.sequence DESC) FILTER (WHERE c.amount_eur IS NOT NULL))[1] AS amount
  FROM members m JOIN transactions c ON c.id = m.id
  GROUP BY m.root_id
)`;

function windowParams(windows: readonly ChainWindow[]): unknown[] {
  return [windows.map((w) => w.nodeId), windows.map((w) => iso(w.lo)), windows.map((w) => iso(w.hi))];
}

/** Chains of the windows (one per node), oldest root first. */
export async function loadChains(q: Queryable, windows: readonly ChainWindow[]): Promise<ChainFact[]> {
  const { rows } = await q.query<{ node_id: string; type: 'settlement' | 'dispatch'; ts: number; status: string; amount: number | null }>(
    `${CHAINS_CTE}
     SELECT r.node_id, r.type, (extract(epoch FROM r.ts) * 1000)::float8 AS ts, ch.status, ch.amount
     FROM roots r JOIN chains ch ON ch.root_id = r.id
     ORDER BY r.ts`,
    windowParams(windows),
  );
  return rows.map((r) => ({ nodeId: r.node_id, kind: r.type, rootTs: r.ts, status: r.status, amountEur: r.amount }));
}

/** Money and dispatches of one node over a period, from its chains. */
export interface NodeMoney {
  /** Σ positive counted amounts, EUR ≥ 0. */
  revenueEur: number;
  /** Σ |negative counted amounts|, EUR ≥ 0. */
  costEur: number;
  /** Dispatch chains not rejected/failed. */
  dispatchCount: number;
}

/** Per node, money and dispatch counts of the chains in its window; nodes without chains are absent. */
export async function sumChainsByNode(q: Queryable, windows: readonly ChainWindow[]): Promise<Map<string, NodeMoney>> {
  const { rows } = await q.query<{ node_id: string; revenue: number; cost: number; dispatches: number }>(
    `${CHAINS_CTE}
     SELECT r.node_id,
            coalesce(sum(ch.amount) FILTER (WHERE r.type = 'settlement' AND ch.amount > 0 AND ch.status <> ALL($4::text[])), 0)::float8 AS revenue,
            coalesce(-sum(ch.amount) FILTER (WHERE r.type = 'settlement' AND ch.amount < 0 AND ch.status <> ALL($4::text[])), 0)::float8 AS cost,
            count(*) FILTER (WHERE r.type = 'dispatch' AND ch.status <> ALL($4::text[]))::int AS dispatches
     FROM roots r JOIN chains ch ON ch.root_id = r.id
     GROUP BY r.node_id`,
    [...windowParams(windows), VOID_STATUSES],
  );
  return new Map(rows.map((r) => [r.node_id, { revenueEur: r.revenue, costEur: r.cost, dispatchCount: r.dispatches }]));
}

/** What analytics needs of a node, read from the `nodes` table (the system of record for peer groups and the portfolio). */
export interface AnalyticsNode {
  nodeId: string;
  type: string;
  status: string;
  /** kW > 0 */
  capacityKw: number;
  timezone: string;
  /** s > 0 */
  telemetryIntervalSeconds: number;
}

const NODE_COLUMNS = 'node_id, type, status, capacity_kw, timezone, telemetry_interval_seconds';
type NodeRow = { node_id: string; type: string; status: string; capacity_kw: number; timezone: string; telemetry_interval_seconds: number };
const toNode = (r: NodeRow): AnalyticsNode => ({
  nodeId: r.node_id,
  type: r.type,
  status: r.status,
  capacityKw: r.capacity_kw,
  timezone: r.timezone,
  telemetryIntervalSeconds: r.telemetry_interval_seconds,
});

export async function getNode(q: Queryable, nodeId: string): Promise<AnalyticsNode | undefined> {
  const { rows } = await q.query<NodeRow>(`SELECT ${NODE_COLUMNS} FROM nodes WHERE node_id = $1`, [nodeId]);
  return rows[0] ? toNode(rows[0]) : undefined;
}

/** Nodes not decommissioned, optionally of one type, in node id order. */
export async function listLiveNodes(q: Queryable, type?: string): Promise<AnalyticsNode[]> {
  const { rows } = await q.query<NodeRow>(
    `SELECT ${NODE_COLUMNS} FROM nodes WHERE status <> 'decommissioned' AND ($1::text IS NULL OR type = $1) ORDER BY node_id COLLATE "C"`,
    [type ?? null],
  );
  return rows.map(toNode);
}

/** Count and highest id of the invalidation-log rows over [lo, hi) (any node). */
const LOGGED_PART = (lo: string, hi: string) =>
  `SELECT count(*) || ':' || coalesce(max(id), 0) FROM telemetry_invalidation_log WHERE ranges && tstzrange(${lo}::timestamptz, greatest(${lo}::timestamptz, ${hi}::timestamptz))`;

/**
 * Database part of the freshness fingerprint of one node's analytics over instants `[lo, hi)`,
 * read before an answer is computed. Each part is written in the same database transaction as
 * the write that changes an answer, so it has changed by the time the write is acknowledged:
 * - telemetry: a write marks the 15-minute buckets its readings hold into (the marks lie in the
 *   range of every answer the write touches), or, written directly, logs them in one row of
 *   telemetry_invalidation_log for all its nodes; the part is the count and newest mark time
 *   there, and the count and highest id of the log rows over the range. The refresher later
 *   clears marks, which could bring the part back to an earlier value: the pub/sub generation
 *   counters in the cache key (cache.ts) have moved on by then.
 * - transactions: (count, highest sequence) of the node's settlement, dispatch and adjustment
 *   records, which only grow (pruning removes the lowest sequences, so no earlier pair recurs).
 *   Node-wide, because a follow-up record dated anywhere changes the day of its chain's root.
 * - metadata: the node's version.
 */
export async function nodeFingerprint(q: Queryable, nodeId: string, lo: number, hi: number): Promise<string> {
  const { rows } = await q.query<{ f: string }>(
    `SELECT concat_ws('|',
       (SELECT count(*) || ':' || coalesce(max(marked_at)::text, '') FROM telemetry_dirty_buckets
         WHERE node_id = $1 AND bucket_start >= $2 AND bucket_start < $3),
       (${LOGGED_PART('$2', '$3')}),
       (SELECT count(*) || ':' || coalesce(max(sequence), 0) FROM transactions
         WHERE node_id = $1 AND type IN ('settlement', 'dispatch', 'adjustment')),
       coalesce((SELECT version || ':' || updated_at::text FROM nodes WHERE node_id = $1), '-')) AS f`,
    [nodeId, iso(Math.floor(lo / 900_000) * 900_000), iso(hi)],
  );
  return rows[0].f;
}

/**
 * The same for answers over every node (portfolio, peer groups): marks of any node in range,
 * the log's head (any append; cheaper than filtering the whole log by type), and the nodes
 * table (count, Σ version, newest change: a node added, changed or decommissioned).
 */
export async function fleetFingerprint(q: Queryable, lo: number, hi: number): Promise<string> {
  const { rows } = await q.query<{ f: string }>(
    `SELECT concat_ws('|',
       (SELECT count(*) || ':' || coalesce(max(marked_at)::text, '') FROM telemetry_dirty_buckets
         WHERE bucket_start >= $1 AND bucket_start < $2),
       (${LOGGED_PART('$1', '$2')}),
       coalesce((SELECT last_sequence::text FROM transaction_chain_head), '-'),
       (SELECT count(*) || ':' || coalesce(sum(version), 0) || ':' || coalesce(max(updated_at)::text, '') FROM nodes)) AS f`,
    [iso(Math.floor(lo / 900_000) * 900_000), iso(hi)],
  );
  return rows[0].f;
}
