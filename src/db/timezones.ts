import type { Queryable } from './pool.js';

/**
 * Time zones the service takes, for a node's `timezone` and for a query's `tz`: names PostgreSQL
 * knows (`pg_timezone_names`, read once per instance and cached), spelt exactly, that Node's Intl
 * also accepts. Analytics compute local days in both places, so a zone only one of them knows
 * would fail later, far from the write that stored it.
 */
export class TimezoneCatalog {
  private names?: Promise<Set<string>>;
  private readonly intlChecked = new Map<string, boolean>();

  constructor(private readonly db: Queryable) {}

  async isKnown(name: string): Promise<boolean> {
    const pgNames = await this.load();
    // Exact spelling: PostgreSQL and Intl both fold case, but the stored name is shown and compared verbatim.
    if (!pgNames.has(name)) return false;
    let ok = this.intlChecked.get(name);
    if (ok === undefined) {
      try {
        new Intl.DateTimeFormat('en-US', { timeZone: name });
        ok = true;
      } catch {
        ok = false;
      }
      this.intlChecked.set(name, ok);
    }
    return ok;
  }

  private load(): Promise<Set<string>> {
    if (!this.names) {
      this.names = this.db.query<{ name: string }>('SELECT name FROM pg_timezone_names').then(
        ({ rows }) => new Set(rows.map((r) => r.name)),
        (err: unknown) => {
          // Do not cache a failure (database briefly down): the next call tries again.
          this.names = undefined;
          throw err;
        },
      );
    }
    return this.names;
  }
}

const catalogs = new WeakMap<Queryable, TimezoneCatalog>();

/** The catalog of a pool (one per pool, so the names are read once per instance). */
export function timezoneCatalog(db: Queryable): TimezoneCatalog {
  let c = catalogs.get(db);
  if (!c) {
    c = new TimezoneCatalog(db);
    catalogs.set(db, c);
  }
  return c;
}
