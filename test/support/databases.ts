import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { migrate } from '../../src/db/migrate.js';
import { createPool } from '../../src/db/pool.js';

/** The same server as `url`, database `name`. */
export function withDatabase(url: string, name: string): string {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

export function uniqueName(prefix: string): string {
  return `${prefix}_${process.pid}_${randomBytes(4).toString('hex')}`;
}

async function admin<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: withDatabase(url, 'postgres') });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** Creates a fresh database: a copy of `template` when given (already migrated), else migrated now. */
export async function createTestDatabase(serverUrl: string, template?: string): Promise<string> {
  const name = uniqueName('vpp_test');
  await admin(serverUrl, (c) => c.query(`CREATE DATABASE "${name}"${template ? ` TEMPLATE "${template}"` : ''}`));
  const url = withDatabase(serverUrl, name);
  if (!template) {
    const pool = createPool(url, { max: 1 });
    try {
      await migrate(pool);
    } finally {
      await pool.end();
    }
  }
  return url;
}

export async function dropDatabase(url: string): Promise<void> {
  const name = new URL(url).pathname.slice(1);
  await admin(url, (c) => c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`));
}

/** Creates and migrates a template database that test files copy. Returns its name. */
export async function createTemplateDatabase(serverUrl: string): Promise<string> {
  const url = await createTestDatabase(serverUrl);
  const name = new URL(url).pathname.slice(1);
  await admin(serverUrl, (c) => c.query(`ALTER DATABASE "${name}" WITH IS_TEMPLATE true`));
  return name;
}

export async function dropTemplateDatabase(serverUrl: string, name: string): Promise<void> {
  await admin(serverUrl, async (c) => {
    await c.query(`ALTER DATABASE "${name}" WITH IS_TEMPLATE false`);
    await c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  });
}
