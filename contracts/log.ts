/**
 * Structured logs: one small logger every process uses (supervisor, vmm, driver-domain,
 * priv-domain). Each record has a time, a level, the component, the pid, a message and fields, and
 * goes to two places:
 *   - stderr: JSON lines, or text (`--log-format text`; the default on a terminal): the message
 *     with the prefix every tsvmm line had (`tsvmm: ...`, `tsvmm vmm: ...`), and on a terminal the
 *     time and the level (for warnings and errors) in front;
 *   - the VM's log file, <state dir>/tsvmm.log (contracts/paths.ts), always JSON lines. The
 *     supervisor opens it (O_APPEND) and hands every component the fd (FD.LOG, contracts/fds.ts),
 *     so a confined component writes it without opening anything; the supervisor alone rotates it
 *     (LogFile: past TSVMM_LOG_MAX bytes, copied to tsvmm.log.1 .. .3 and truncated in place, since
 *     every process shares the one open file).
 * A record is one write() of one line: lines of different processes do not interleave.
 *
 * `tsvmm run --log-level error|warn|info|debug` (env TSVMM_LOG_LEVEL) filters both places;
 * `--log-format json|text` (env TSVMM_LOG_FORMAT) picks stderr's. The supervisor resolves both and
 * puts them in its environment, which every component inherits.
 *
 * A JSON record: {"time":"2026-12-06T05:31:02.123Z","level":"warn","component":"supervisor",
 * "pid":4242,"msg":"vmm hung: ...","event":"hang-kill","target":"vmm","evidence":"..."}: the
 * fields are merged in after the five fixed keys (which they cannot replace, except `component`:
 * a line one process writes about another, the keeper's relayed by the vmm, names that one).
 */
import * as fs from 'fs';
import * as tty from 'tty';
import { FD } from './fds';

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = typeof LOG_LEVELS[number];
export const LOG_FORMATS = ['json', 'text'] as const;
export type LogFormat = typeof LOG_FORMATS[number];
export type LogFields = Record<string, string | number | boolean | null | undefined>;

export const DEFAULT_LOG_LEVEL: LogLevel = 'info';
/** The log file is rotated past this size (env TSVMM_LOG_MAX, bytes); this many old ones are kept. */
export const LOG_FILE_MAX = 8 * 1024 * 1024;
export const LOG_FILE_KEEP = 3;

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };
const RESERVED = new Set(['time', 'level', 'pid', 'msg']);

export function isLogLevel(s: string): s is LogLevel { return (LOG_LEVELS as readonly string[]).includes(s); }
export function isLogFormat(s: string): s is LogFormat { return (LOG_FORMATS as readonly string[]).includes(s); }

export interface LoggerOptions {
  component: string;
  level?: LogLevel;
  format?: LogFormat;
  /** The log file's fd (JSON lines), if already open. */
  fileFd?: number;
  /** stderr is a terminal: text lines get the time and level in front. Default: isatty(2). */
  tty?: boolean;
}

export class Logger {
  readonly component: string;
  level: LogLevel;
  readonly format: LogFormat;
  private fileFd?: number;
  private readonly tty: boolean;
  private readonly prefix: string;
  private stderrOpen = true;
  private fileFailed = false;
  /** Records logged before the file was attached (the supervisor's first lines): written to it then. */
  private early: string[] | undefined = [];

  constructor(o: LoggerOptions) {
    this.component = o.component;
    this.level = o.level ?? DEFAULT_LOG_LEVEL;
    this.tty = o.tty ?? tty.isatty(2);
    this.format = o.format ?? (this.tty ? 'text' : 'json');
    this.prefix = o.component === 'supervisor' ? 'tsvmm' : `tsvmm ${o.component}`;
    if (o.fileFd !== undefined) this.attachFile(o.fileFd);
  }

  enabled(level: LogLevel): boolean { return RANK[level] <= RANK[this.level]; }

  error(msg: string, fields?: LogFields): void { this.write('error', msg, fields); }
  warn(msg: string, fields?: LogFields): void { this.write('warn', msg, fields); }
  info(msg: string, fields?: LogFields): void { this.write('info', msg, fields); }
  debug(msg: string, fields?: LogFields): void { this.write('debug', msg, fields); }

  /** From now on records also go to `fd` (JSON lines); those logged before are written first. */
  attachFile(fd: number): void {
    this.fileFd = fd;
    const early = this.early;
    this.early = undefined;
    for (const line of early ?? []) this.toFile(line);
  }

  /** stderr went away (a closed pipe, a hung-up terminal): the file only from now on. */
  detachStderr(): void { this.stderrOpen = false; }

  write(level: LogLevel, msg: string, fields?: LogFields): void {
    if (!this.enabled(level)) return;
    const now = new Date();
    const json = this.json(now, level, msg, fields);
    if (this.stderrOpen) {
      const line = this.format === 'json' ? json : this.text(now, level, msg);
      try { fs.writeSync(2, line + '\n'); } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') this.stderrOpen = false;
      }
    }
    if (this.fileFd !== undefined) this.toFile(json);
    else if (this.early && this.early.length < 256) this.early.push(json);
  }

  private toFile(line: string): void {
    try {
      fs.writeSync(this.fileFd!, line + '\n');
      this.fileFailed = false;
    } catch (e) {
      // A full disk: said once on stderr, the log misses lines until it has room.
      if (!this.fileFailed && this.stderrOpen) {
        try { fs.writeSync(2, `${this.prefix}: writing the log file failed (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); it misses lines until the disk has room\n`); } catch { /* none */ }
      }
      this.fileFailed = true;
    }
  }

  private json(now: Date, level: LogLevel, msg: string, fields?: LogFields): string {
    const rec: Record<string, unknown> = { time: now.toISOString(), level, component: this.component, pid: process.pid, msg };
    if (fields) for (const [k, v] of Object.entries(fields)) if (v !== undefined && !RESERVED.has(k)) rec[k] = v;
    return JSON.stringify(rec);
  }

  private text(now: Date, level: LogLevel, msg: string): string {
    if (!this.tty) return `${this.prefix}: ${msg}`;
    const t = `${String(now.getHours()).padStart(2, '0')}:${String(now.getMinutes()).padStart(2, '0')}:${String(now.getSeconds()).padStart(2, '0')}.${String(now.getMilliseconds()).padStart(3, '0')}`;
    return `${t} ${this.prefix}: ${level === 'info' ? '' : `${level.toUpperCase()} `}${msg}`;
  }
}

/** The level and format `tsvmm run` resolved (TSVMM_LOG_LEVEL, TSVMM_LOG_FORMAT), or the defaults. */
export function logSettings(env: NodeJS.ProcessEnv = process.env): { level: LogLevel; format?: LogFormat } {
  const level = env.TSVMM_LOG_LEVEL ?? '';
  const format = env.TSVMM_LOG_FORMAT ?? '';
  return { level: isLogLevel(level) ? level : DEFAULT_LOG_LEVEL, format: isLogFormat(format) ? format : undefined };
}

let current: Logger | undefined;

/** This process's logger (its component's, once set up), for the shared modules that log. */
export function processLogger(): Logger {
  return current ??= new Logger({ component: 'supervisor', ...logSettings() });
}

/** Makes `l` the logger processLogger() returns. */
export function setProcessLogger(l: Logger): Logger {
  current = l;
  return l;
}

/**
 * The logger of a component process (vmm, driver-domain, priv-domain): the settings its supervisor
 * passed in the environment, and the log file on FD.LOG when the supervisor passed one. Call at
 * start-up, before the component confines itself (the fd is checked with fstat).
 */
export function componentLogger(component: string): Logger {
  let fileFd: number | undefined;
  try { if (fs.fstatSync(FD.LOG).isFile()) fileFd = FD.LOG; } catch { fileFd = undefined; }
  const s = logSettings();
  // TSVMM_RESTORE_DEBUG (docs/architecture.md) asks for the restore timelines: debug records.
  const level = process.env.TSVMM_RESTORE_DEBUG && s.level !== 'debug' ? 'debug' : s.level;
  return setProcessLogger(new Logger({ component, level, format: s.format, fileFd }));
}

/**
 * The log file as the supervisor holds it: opened for appending (mode 0600), rotated by copy and
 * truncate (every component writes through its own copy of this one open file).
 */
export class LogFile {
  readonly fd: number;
  private readonly max: number;

  constructor(readonly file: string, max = Number(process.env.TSVMM_LOG_MAX) > 0 ? Number(process.env.TSVMM_LOG_MAX) : LOG_FILE_MAX) {
    this.fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT, 0o600);
    this.max = max;
  }

  /**
   * Past the cap: tsvmm.log.2 -> .3, .1 -> .2, a copy of tsvmm.log -> .1, then tsvmm.log is
   * truncated (a line written between the copy and the truncation is lost: microseconds).
   */
  rotateIfNeeded(): boolean {
    let size: number;
    try { size = fs.fstatSync(this.fd).size; } catch { return false; }
    if (size <= this.max) return false;
    try {
      for (let i = LOG_FILE_KEEP - 1; i >= 1; i--) {
        try { fs.renameSync(`${this.file}.${i}`, `${this.file}.${i + 1}`); } catch { /* none */ }
      }
      fs.copyFileSync(this.file, `${this.file}.1`);
      fs.ftruncateSync(this.fd, 0);
      return true;
    } catch { return false; }
  }

  close(): void { try { fs.closeSync(this.fd); } catch { /* closed */ } }
}
