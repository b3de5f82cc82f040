import type { Domain, Infra } from '../container.js';
import { metadataRoutes } from './routes.js';
import { MetadataService } from './service.js';

/** Node metadata: CRUD with versions and history, and the node queries (active, by type, nearby). */
export function createMetadataDomain(infra: Infra): Domain & { service: MetadataService } {
  const service = new MetadataService({ db: infra.db, metrics: infra.metrics, nodes: infra.nodes, logger: infra.logger });
  return { service, routes: metadataRoutes(service) };
}
