import type { Domain, Infra } from '../container.js';
import { transactionsRoutes } from './routes.js';
import { TransactionsService } from './service.js';

export { TransactionsService, TRANSACTIONS_APPENDED_CHANNEL } from './service.js';
export type { AppendInput, AppendResult, VerifyResult, Proof } from './service.js';
export type { TransactionRecord } from './canonical.js';

/** Retention runs hourly; the first run a minute after start. */
const RETENTION_INTERVAL_MS = 3_600_000;

/** The transaction log: append-only hash chain, anchoring, proofs, retention job. */
export function createTransactionsDomain(infra: Infra): Domain & { service: TransactionsService } {
  const service = new TransactionsService({
    db: infra.db,
    pubsub: infra.pubsub,
    nodes: infra.nodes,
    metrics: infra.metrics,
    logger: infra.logger.child({ domain: 'transactions' }),
    unknownNodes: infra.config.unknownNodes,
    retentionDays: infra.config.retentionTransactionsDays,
  });
  infra.jobs.register({
    name: 'transactions-retention',
    intervalMs: RETENTION_INTERVAL_MS,
    initialDelayMs: 60_000,
    run: ({ signal }) => service.runRetention(signal),
  });
  return {
    service,
    routes: transactionsRoutes(service),
    health: {
      transactions: async () => {
        const h = await service.headInfo();
        return { ok: true, lastSequence: h.lastSequence, lastAnchoredSequence: h.lastAnchoredSequence, unanchored: h.lastSequence - h.lastAnchoredSequence };
      },
    },
    async stop() {
      await service.drain();
    },
  };
}
