import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseDotenv } from 'dotenv';
import { Type, type Static } from 'typebox';
import { Compile } from 'typebox/compile';

/** Scopes an API key can carry. `admin` implies every other scope. */
export const SCOPES = ['telemetry:write', 'transactions:write', 'metadata:write', 'read', 'admin'] as const;
export type Scope = (typeof SCOPES)[number];

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/**
 * The environment the service reads, as strings. Each entry's description is the
 * variable's documentation (also used for `.env.example`).
 */
export const EnvSchema = Type.Object({
  PORT: Type.String({ pattern: '^[0-9]{1,5}$', default: '3000', description: 'HTTP port' }),
  HOST: Type.String({ minLength: 1, default: '127.0.0.1', description: 'HTTP listen address' }),
  DATABASE_URL: Type.Optional(Type.String({ pattern: '^postgres(ql)?://', description: 'PostgreSQL server; unset starts an embedded PostgreSQL in DATA_DIR' })),
  DATABASE_READ_URL: Type.Optional(Type.String({ pattern: '^postgres(ql)?://', description: 'read replica for queries and analytics; unset uses DATABASE_URL' })),
  DATA_DIR: Type.String({ minLength: 1, default: './data', description: 'embedded database and archives' }),
  REDIS_URL: Type.Optional(Type.String({ pattern: '^rediss?://', description: 'Redis for cache, pub/sub, rate limits and the async queue; unset uses in-process implementations' })),
  REDIS_KEY_PREFIX: Type.String({ pattern: '^[A-Za-z0-9_.:-]{1,64}$', default: 'vpp:', description: "prefix of this deployment's Redis keys and channels (deployments sharing one Redis need different ones)" }),
  API_KEYS: Type.Optional(Type.String({ pattern: '^[^=,]+=[a-z:+]+(,[^=,]+=[a-z:+]+)*$', description: 'comma list of key=scope+scope (keys of at least 8 characters)' })),
  RETENTION_TELEMETRY_DAYS: Type.String({ pattern: '^[0-9]+$', default: '30', description: 'raw telemetry retention (days)' }),
  RETENTION_ROLLUP_DAYS: Type.Optional(Type.String({ pattern: '^[0-9]+$', description: 'rollup retention (days); unset: 730, or RETENTION_TELEMETRY_DAYS when that is longer' })),
  ROLLUP_SETTLE_SECONDS: Type.String({ pattern: '^[0-9]+$', default: '30', description: 'a dirty rollup bucket is recomputed once no write has touched it for this long (s); until then queries read it from raw' }),
  RETENTION_TRANSACTIONS_DAYS: Type.String({ pattern: '^[0-9]+$', default: '730', description: 'transaction retention (days)' }),
  UNKNOWN_NODES: Type.Union([Type.Literal('reject'), Type.Literal('accept')], { default: 'reject', description: 'accept stores telemetry for nodes with no metadata' }),
  RATE_LIMIT_PER_MINUTE: Type.String({ pattern: '^[0-9]+$', default: '60000', description: 'requests per minute per key (0 = off)' }),
  INGEST_QUEUE_MAX: Type.String({ pattern: '^[0-9]+$', default: '1000000', description: 'async ingestion queue bound (readings)' }),
  LOG_DIR: Type.String({ minLength: 1, default: './logs', description: 'log files directory' }),
  LOG_LEVEL: Type.Union(LOG_LEVELS.map((l) => Type.Literal(l)), { default: 'info', description: 'log level' }),
});
export type Env = Static<typeof EnvSchema>;

export interface ApiKeySpec {
  key: string;
  scopes: Scope[];
}

/** The resolved configuration every other module reads. Frozen. */
export interface Config {
  port: number;
  host: string;
  databaseUrl: string | undefined;
  databaseReadUrl: string | undefined;
  dataDir: string;
  redisUrl: string | undefined;
  /** Prefix of every Redis key and pub/sub channel of this deployment. */
  redisKeyPrefix: string;
  apiKeys: ApiKeySpec[] | undefined;
  retentionTelemetryDays: number;
  retentionRollupDays: number;
  retentionTransactionsDays: number;
  /** Quiet time before the refresher recomputes a dirty rollup bucket (s). */
  rollupSettleSeconds: number;
  unknownNodes: 'reject' | 'accept';
  rateLimitPerMinute: number;
  ingestQueueMax: number;
  logDir: string;
  logLevel: (typeof LOG_LEVELS)[number];
}

export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`invalid configuration: ${variable}: ${message}`);
    this.name = 'ConfigError';
  }
}

const envCheck = Compile(EnvSchema);

function parseApiKeys(raw: string): ApiKeySpec[] {
  return raw.split(',').map((entry) => {
    const eq = entry.indexOf('=');
    const key = entry.slice(0, eq).trim();
    const scopes = entry.slice(eq + 1).split('+');
    if (key.length < 8) throw new ConfigError('API_KEYS', `key "${key.slice(0, 3)}…" is shorter than 8 characters`);
    for (const s of scopes) {
      if (!(SCOPES as readonly string[]).includes(s)) {
        throw new ConfigError('API_KEYS', `unknown scope "${s}" (known: ${SCOPES.join(', ')})`);
      }
    }
    return { key, scopes: scopes as Scope[] };
  });
}

/** Rollup retention when RETENTION_ROLLUP_DAYS is unset (days), unless raw readings are kept longer. */
const DEFAULT_ROLLUP_DAYS = 730;

function positiveInt(env: Env, name: keyof Env & string, min: number, max: number): number {
  const value = Number(env[name]);
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(name, `must be an integer from ${min} to ${max}, got "${String(env[name])}"`);
  }
  return value;
}

/** Reads `.env` (when present) under the process environment; the process environment wins. */
export function readEnvironment(cwd = process.cwd(), processEnv: NodeJS.ProcessEnv = process.env): Record<string, string | undefined> {
  const file = path.join(cwd, '.env');
  const fromFile = existsSync(file) ? parseDotenv(readFileSync(file)) : {};
  return { ...fromFile, ...processEnv };
}

/**
 * Validates the environment once into a frozen `Config`. Throws `ConfigError`
 * naming the first bad variable. Empty strings count as unset.
 */
export function loadConfig(source: Record<string, string | undefined> = readEnvironment()): Readonly<Config> {
  const raw: Record<string, string> = {};
  for (const key of Object.keys(EnvSchema.properties)) {
    const v = source[key];
    if (v !== undefined && v !== '') raw[key] = v;
  }
  const withDefaults = envCheck.Default(raw) as Record<string, unknown>;
  const firstError = envCheck.Errors(withDefaults)[0];
  if (firstError) {
    const variable = firstError.instancePath.replace(/^\//, '') || String((firstError.params as { requiredProperties?: string[] }).requiredProperties?.[0] ?? 'environment');
    throw new ConfigError(variable, `${firstError.message} (got "${String(withDefaults[variable] ?? '')}")`);
  }
  const env = withDefaults as Env;
  const retentionTelemetryDays = positiveInt(env, 'RETENTION_TELEMETRY_DAYS', 1, 36500);
  const config: Config = {
    port: positiveInt(env, 'PORT', 0, 65535),
    host: env.HOST,
    databaseUrl: env.DATABASE_URL,
    databaseReadUrl: env.DATABASE_READ_URL ?? env.DATABASE_URL,
    dataDir: path.resolve(env.DATA_DIR),
    redisUrl: env.REDIS_URL,
    redisKeyPrefix: env.REDIS_KEY_PREFIX,
    apiKeys: env.API_KEYS === undefined ? undefined : parseApiKeys(env.API_KEYS),
    retentionTelemetryDays,
    // Unset: 730 days, or as long as raw readings are kept when that is longer (see below).
    retentionRollupDays:
      env.RETENTION_ROLLUP_DAYS === undefined ? Math.max(DEFAULT_ROLLUP_DAYS, retentionTelemetryDays) : positiveInt(env, 'RETENTION_ROLLUP_DAYS', 1, 36500),
    retentionTransactionsDays: positiveInt(env, 'RETENTION_TRANSACTIONS_DAYS', 1, 36500),
    rollupSettleSeconds: positiveInt(env, 'ROLLUP_SETTLE_SECONDS', 0, 86400),
    unknownNodes: env.UNKNOWN_NODES,
    rateLimitPerMinute: positiveInt(env, 'RATE_LIMIT_PER_MINUTE', 0, 1e9),
    ingestQueueMax: positiveInt(env, 'INGEST_QUEUE_MAX', 1, 1e9),
    logDir: path.resolve(env.LOG_DIR),
    logLevel: env.LOG_LEVEL,
  };
  // Queries read rollups wherever they are clean, and retention deletes them without a mark: rollups
  // kept for less time than the raw readings would make days that still have readings answer as empty.
  // A value set explicitly must not be shorter.
  if (config.retentionRollupDays < config.retentionTelemetryDays) {
    throw new ConfigError('RETENTION_ROLLUP_DAYS', `must be at least RETENTION_TELEMETRY_DAYS (${config.retentionTelemetryDays}), got ${config.retentionRollupDays}: rollups are read wherever raw readings are`);
  }
  return Object.freeze(config);
}
