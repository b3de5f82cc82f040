import type { Domain, Infra } from '../container.js';
import type { KeyRing } from '../http/auth.js';
import type { EventLog } from './event-log.js';
import { MemoryEventLog } from './event-log-memory.js';
import { RedisEventLog } from './event-log-redis.js';
import { PORTFOLIO_EVENT_MAX_AGE_MS, PortfolioService } from './portfolio.js';
import { realtimeRoutes } from './routes.js';
import { StreamHub, type StreamLimits } from './stream.js';

export { TELEMETRY_LATEST_CHANNEL, type LatestMessage, type StreamLimits } from './stream.js';
export type { Portfolio, PortfolioFigures } from './portfolio.js';

export interface RealtimeDomain extends Domain {
  portfolio: PortfolioService;
  hub: StreamHub;
  log: EventLog;
}

/**
 * Real-time portfolio and the SSE stream. Needs the key ring because the stream also accepts
 * its key as `?apiKey=` (EventSource cannot send headers), which the global auth hook does not read.
 */
export function createRealtimeDomain(infra: Infra, deps: { keyRing: KeyRing; limits?: Partial<StreamLimits> }): RealtimeDomain {
  const portfolio = new PortfolioService(infra.db.readPool, infra.cache, infra.metrics);
  const log: EventLog = infra.redis ? new RedisEventLog(infra.redis, infra.keyPrefix) : new MemoryEventLog();
  const hub = new StreamHub(
    { pubsub: infra.pubsub, log, nodes: infra.nodes, metrics: infra.metrics, logger: infra.logger, portfolio: () => portfolio.get(PORTFOLIO_EVENT_MAX_AGE_MS) },
    deps.limits,
  );
  return {
    portfolio,
    hub,
    log,
    routes: realtimeRoutes({ portfolio, hub, keyRing: deps.keyRing }),
    async start() {
      await hub.start();
    },
    async stop() {
      await hub.stop();
      await log.close();
    },
  };
}
