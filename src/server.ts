import path from 'node:path';
import { ConfigError, loadConfig, type Config } from './config.js';
import { createLogger } from './logger.js';
import { startEmbeddedPostgres, type EmbeddedDatabase } from './db/embedded.js';
import { createPool } from './db/pool.js';
import { migrate } from './db/migrate.js';
import { createContainer } from './container.js';
import { buildApp } from './app.js';

/** Process concerns only: configuration, the embedded database, listen, and graceful shutdown. */
async function main(): Promise<void> {
  let config: Readonly<Config>;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      process.exit(78); // EX_CONFIG
    }
    throw err;
  }
  const logger = createLogger(config);
  const t0 = performance.now();

  let embedded: EmbeddedDatabase | undefined;
  let databaseUrl = config.databaseUrl;
  if (!databaseUrl) {
    const dir = path.join(config.dataDir, 'postgres');
    logger.info({ dir }, 'DATABASE_URL unset: starting embedded PostgreSQL');
    embedded = await startEmbeddedPostgres({ dir, onLog: (line) => logger.debug({ component: 'embedded-postgres' }, line) });
    databaseUrl = embedded.url;
  }

  const migrationPool = createPool(databaseUrl, { max: 1 });
  try {
    const applied = await migrate(migrationPool);
    if (applied.length) logger.info({ applied }, 'migrations applied');
  } finally {
    await migrationPool.end();
  }

  const container = await createContainer(config, logger, {
    databaseUrl,
    announceKey: (key) => {
      // Printed once, to stdout only (not to the log files); only its hash is stored.
      process.stdout.write(`\n  Generated admin API key (shown once, store it now):\n\n    ${key}\n\n  Use it as: Authorization: Bearer ${key}\n\n`);
    },
  });
  const app = await buildApp(container);
  await container.start();
  await app.listen({ port: config.port, host: config.host });
  const address = app.server.address();
  const where = typeof address === 'object' && address ? `http://${config.host}:${address.port}` : String(address);
  logger.info({ startupMs: Math.round(performance.now() - t0), embedded: Boolean(embedded) }, `listening on ${where}`);
  process.stdout.write(`vpp-data-layer listening on ${where} (docs: ${where}/docs)\n`);

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down: draining requests');
    const hard = setTimeout(() => {
      logger.error('shutdown took longer than 30 s; exiting');
      process.exit(1);
    }, 30_000);
    hard.unref();
    try {
      // Connections busy when closing began stay open after their response under keep-alive
      // (forceCloseConnections: 'idle' only closes those idle at that moment), and the server
      // would wait for the client to hang up. Close each as soon as it goes idle.
      const sweep = setInterval(() => app.server.closeIdleConnections(), 100);
      await app.close(); // stops accepting, waits for in-flight requests
      clearInterval(sweep);
      await container.close(); // flushes buffered ingestion, closes pools
      await embedded?.stop();
      logger.info('stopped');
      logger.flush();
      process.exitCode = 0;
    } catch (err) {
      logger.error({ err }, 'shutdown failed');
      process.exitCode = 1;
    }
  };
  // embedded-postgres (imported above, used or not) installs async-exit-hook, which answers
  // SIGTERM/SIGINT with process.exit(128 + n) on the next tick: before requests drain and
  // buffered readings are written. Our shutdown stops the embedded database itself.
  process.removeAllListeners('SIGTERM');
  process.removeAllListeners('SIGINT');
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}

main().catch((err: unknown) => {
  console.error('start-up failed:', err instanceof Error ? err.message : err);
  process.exit(1);
});
