/**
 * The priv-domain's durable store: one SQLite database per VM (better-sqlite3), holding its
 * configuration, its lifecycle events, its labels and annotations, and the responses to requests
 * made with an Idempotency-Key.
 *
 * Why SQLite: a change and its idempotency record must commit together, atomically, or a retry
 * could apply a change twice (or report one that was lost); SQLite gives multi-row transactions,
 * crash recovery and queries without writing a journal format, a compactor and a recovery scan
 * of our own. journal_mode=WAL + synchronous=FULL fsyncs the WAL on every commit, so a change
 * is on disk before the API acknowledges it and survives a priv-domain SIGKILL, a host crash and
 * a reboot. better-sqlite3 is synchronous: a commit finishes before the response is written.
 */
import * as fs from 'fs';
import * as path from 'path';
import * as crypto from 'crypto';
import Database from 'better-sqlite3';

export const SCHEMA_VERSION = 1;

export interface EventRow { id: number; at: number; runId: string; kind: string; detail: Record<string, unknown> }
export interface AnnotationRow { id: number; at: number; text: string }
export interface StoredResponse { status: number; body: unknown }

export class Store {
  readonly db: Database.Database;

  private constructor(readonly file: string) {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    const fresh = !fs.existsSync(file);
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS vm (name TEXT PRIMARY KEY, config TEXT NOT NULL, run_id TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
      CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, run_id TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS labels (k TEXT PRIMARY KEY, v TEXT NOT NULL, updated_at REAL NOT NULL);
      CREATE TABLE IF NOT EXISTS annotations (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, text TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL, at REAL NOT NULL);
    `);
    this.db.prepare('INSERT OR IGNORE INTO meta (k, v) VALUES (?, ?)').run('schema_version', String(SCHEMA_VERSION));
    if (fresh) {
      // The new file's directory entry must be durable too.
      const dfd = fs.openSync(path.dirname(file), 'r');
      try { fs.fsyncSync(dfd); } finally { fs.closeSync(dfd); }
    }
  }

  static open(file: string): Store {
    return new Store(file);
  }

  close(): void {
    this.db.close();
  }

  /** Runs `fn` in one transaction (one fsync'd commit). */
  tx<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  /** Records the VM's configuration for run `runId`; a new run also gets a 'started' event. */
  recordRun(name: string, config: unknown, runId: string): boolean {
    return this.tx(() => {
      const row = this.db.prepare('SELECT run_id FROM vm WHERE name = ?').get(name) as { run_id: string } | undefined;
      if (row?.run_id === runId) return false;
      const now = Date.now() / 1000;
      this.db.prepare(`INSERT INTO vm (name, config, run_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT(name) DO UPDATE SET config = excluded.config, run_id = excluded.run_id, updated_at = excluded.updated_at`)
        .run(name, JSON.stringify(config), runId, now, now);
      this.addEvent(runId, 'started', { config });
      return true;
    });
  }

  vm(name: string): { name: string; config: unknown; runId: string; createdAt: number; updatedAt: number } | undefined {
    const r = this.db.prepare('SELECT * FROM vm WHERE name = ?').get(name) as
      { name: string; config: string; run_id: string; created_at: number; updated_at: number } | undefined;
    return r && { name: r.name, config: JSON.parse(r.config), runId: r.run_id, createdAt: r.created_at, updatedAt: r.updated_at };
  }

  addEvent(runId: string, kind: string, detail: Record<string, unknown> = {}): EventRow {
    const at = Date.now() / 1000;
    const r = this.db.prepare('INSERT INTO events (at, run_id, kind, detail) VALUES (?, ?, ?, ?)').run(at, runId, kind, JSON.stringify(detail));
    return { id: Number(r.lastInsertRowid), at, runId, kind, detail };
  }

  /**
   * Records a component's recovery (cause "hang" after a hang kill; warm: a standby took over, else
   * a cold restart) as a `recovery` event, once: a restarted priv-domain is sent every recovery of
   * the run again.
   */
  addRecovery(runId: string, r: { component: string; cause: string; seconds: number; at: number; warm?: boolean }): boolean {
    return this.addOnce(runId, 'recovery', { component: r.component, cause: r.cause, seconds: r.seconds, warm: r.warm === true, at: r.at });
  }

  /** A hang kill (supervisor/hang-watch.ts) as a `hang-kill` event with its evidence, once. */
  addHangKill(runId: string, h: { component: string; pid: number; stillMs: number; evidence: string; at: number }): boolean {
    return this.addOnce(runId, 'hang-kill', { component: h.component, pid: h.pid, stillMs: h.stillMs, evidence: h.evidence, at: h.at });
  }

  /** A warm standby's takeover as a `takeover` event, once. */
  addTakeover(runId: string, t: { component: string; pid: number; fromPid: number; ms: number; reason: string; at: number }): boolean {
    return this.addOnce(runId, 'takeover', { component: t.component, pid: t.pid, fromPid: t.fromPid, ms: t.ms, reason: t.reason, at: t.at });
  }

  /** An event of `kind` about `detail.component` at `detail.at`, unless this run has it already. */
  private addOnce(runId: string, kind: string, detail: { component: string; at: number } & Record<string, unknown>): boolean {
    return this.tx(() => {
      const seen = this.db.prepare(`SELECT 1 FROM events WHERE kind = ? AND run_id = ?
        AND json_extract(detail, '$.component') = ? AND json_extract(detail, '$.at') = ?`).get(kind, runId, detail.component, detail.at);
      if (seen) return false;
      this.addEvent(runId, kind, detail);
      return true;
    });
  }

  events(sinceId = 0, limit = 1000): EventRow[] {
    const rows = this.db.prepare('SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?').all(sinceId, limit) as
      { id: number; at: number; run_id: string; kind: string; detail: string }[];
    return rows.map((r) => ({ id: r.id, at: r.at, runId: r.run_id, kind: r.kind, detail: JSON.parse(r.detail) }));
  }

  lastEvent(kinds: string[]): EventRow | undefined {
    const r = this.db.prepare(`SELECT * FROM events WHERE kind IN (${kinds.map(() => '?').join(',')}) ORDER BY id DESC LIMIT 1`).get(...kinds) as
      { id: number; at: number; run_id: string; kind: string; detail: string } | undefined;
    return r && { id: r.id, at: r.at, runId: r.run_id, kind: r.kind, detail: JSON.parse(r.detail) };
  }

  labels(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const r of this.db.prepare('SELECT k, v FROM labels ORDER BY k').all() as { k: string; v: string }[]) out[r.k] = r.v;
    return out;
  }

  setLabel(k: string, v: string): void {
    this.db.prepare('INSERT INTO labels (k, v, updated_at) VALUES (?, ?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v, updated_at = excluded.updated_at')
      .run(k, v, Date.now() / 1000);
  }

  deleteLabel(k: string): boolean {
    return this.db.prepare('DELETE FROM labels WHERE k = ?').run(k).changes > 0;
  }

  addAnnotation(text: string): AnnotationRow {
    const at = Date.now() / 1000;
    const r = this.db.prepare('INSERT INTO annotations (at, text) VALUES (?, ?)').run(at, text);
    return { id: Number(r.lastInsertRowid), at, text };
  }

  annotations(): AnnotationRow[] {
    return this.db.prepare('SELECT id, at, text FROM annotations ORDER BY id').all() as AnnotationRow[];
  }

  /** The response stored for `key`, or a conflict when the key was used for a different request. */
  idempotent(key: string, fingerprint: string): StoredResponse | 'conflict' | undefined {
    const r = this.db.prepare('SELECT fingerprint, status, body FROM idempotency WHERE key = ?').get(key) as
      { fingerprint: string; status: number; body: string } | undefined;
    if (!r) return undefined;
    if (r.fingerprint !== fingerprint) return 'conflict';
    return { status: r.status, body: JSON.parse(r.body) };
  }

  remember(key: string, fingerprint: string, res: StoredResponse): void {
    this.db.prepare('INSERT INTO idempotency (key, fingerprint, status, body, at) VALUES (?, ?, ?, ?, ?)')
      .run(key, fingerprint, res.status, JSON.stringify(res.body), Date.now() / 1000);
  }
}

export function fingerprint(method: string, url: string, body: string): string {
  return crypto.createHash('sha256').update(`${method} ${url}\n${body}`).digest('hex');
}
