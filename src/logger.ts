import { mkdirSync } from 'node:fs';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import type { Config } from './config.js';

/**
 * JSON-lines logger to stdout, `LOG_DIR/combined.log`, and errors also to `LOG_DIR/error.log`.
 * `stdout: false` (tests) writes the files only.
 */
export function createLogger(config: Pick<Config, 'logDir' | 'logLevel'>, opts: { stdout?: boolean } = {}): Logger {
  mkdirSync(config.logDir, { recursive: true });
  const streams: pino.StreamEntry[] = [
    { level: 'trace', stream: pino.destination({ dest: path.join(config.logDir, 'combined.log'), mkdir: true, sync: false }) },
    { level: 'error', stream: pino.destination({ dest: path.join(config.logDir, 'error.log'), mkdir: true, sync: false }) },
  ];
  if (opts.stdout !== false) streams.unshift({ level: 'trace', stream: pino.destination({ dest: 1, sync: false }) });
  return pino(
    {
      level: config.logLevel,
      base: { service: 'vpp-data-layer' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: ['req.headers.authorization', 'req.headers["x-api-key"]'], censor: '[redacted]' },
    },
    pino.multistream(streams),
  );
}
