// The small part of better-sqlite3's API the store uses (its own package ships no types, and
// @types/better-sqlite3 is not a dependency).
declare module 'better-sqlite3' {
  namespace Database {
    interface RunResult { changes: number; lastInsertRowid: number | bigint }
    interface Statement {
      run(...params: unknown[]): RunResult;
      get(...params: unknown[]): unknown;
      all(...params: unknown[]): unknown[];
    }
    interface Database {
      prepare(sql: string): Statement;
      exec(sql: string): this;
      pragma(sql: string, opts?: { simple?: boolean }): unknown;
      transaction<F extends (...args: never[]) => unknown>(fn: F): F;
      close(): this;
    }
  }
  const Database: { new (file: string, opts?: Record<string, unknown>): Database.Database };
  export = Database;
}
