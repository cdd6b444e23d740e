/**
 * Runs `tsvmm run` on the counter workload and SIGKILLs its vmm at random
 * moments, watching the guest's serial output and the supervisor's log.
 * Shared by test/recovery-vmm.test.ts and bench/recovery.ts.
 */
import * as fs from 'fs';
import * as path from 'path';
import { ChildProcess, spawn } from 'child_process';

// tsvmm's log lines on a pipe are JSON by default (contracts/log.ts); these read the text ones.
process.env.TSVMM_LOG_FORMAT ??= 'text';

export const REPO = path.resolve(__dirname, '..', '..', '..');
const BIN = path.join(REPO, 'bin', 'tsvmm.js');

export interface KillRunOptions {
  cpus: number;
  kills: number;
  /** counter steps between progress lines */
  report: number;
  /** random wait after the guest made progress again, before the next kill (ms) */
  minDelayMs?: number;
  maxDelayMs?: number;
  /** give up on one recovery after this long (ms) */
  recoveryTimeoutMs?: number;
  env?: Record<string, string>;
}

export interface KillSample {
  /** kill -> the supervisor's "recovered vmm" line */
  logMs: number;
  /** kill -> the first progress line after it (per the test's clock) */
  progressMs: number;
  /** the supervisor's own measures, parsed from its line */
  supervisorMs: number;
  saveMs: number;
}

export interface KillRunResult {
  samples: KillSample[];
  errors: string[];
  /** lines that were not a well-formed guest line */
  malformed: string[];
  backwards: string[];
  duplicates: number;
  lastN: number[];
  recoveryLines: number;
  restoreDebug: string[];
  stderr: string;
  exit: { code: number | null; signal: string | null };
  leftovers: number[];
}

const COUNTER = /^@counter cpu=(\d+) n=(\d+) hash=([0-9a-f]{16}) tsc=\d+ ok$/;
const RECOVERED = /recovered vmm \(cause: ([^)]*)\) in ([\d.]+) ms \(keeper save ([\d.]+) ms/;
const READY = /vmm ready \(pid (\d+)/;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** pids of processes holding an fd to a memfd whose name contains `tag`. */
export function holdersOf(tag: string): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    let fds: string[];
    try { fds = fs.readdirSync(`/proc/${p}/fd`); } catch { continue; }
    for (const fd of fds) {
      try {
        if (fs.readlinkSync(`/proc/${p}/fd/${fd}`).includes(tag)) { out.push(Number(p)); break; }
      } catch { /* raced */ }
    }
  }
  return out;
}

export async function killRun(o: KillRunOptions): Promise<KillRunResult> {
  const name = `killrun-${process.pid}-${Date.now()}`;
  const child: ChildProcess = spawn(process.execPath, [BIN, 'run', '--name', name, '--cpus', String(o.cpus),
    '--cmdline', `workload=counter n=0 report=${o.report}`], {
    stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...(o.env ?? {}) },
  });
  const r: KillRunResult = {
    samples: [], errors: [], malformed: [], backwards: [], duplicates: 0, lastN: [], recoveryLines: 0,
    restoreDebug: [], stderr: '', exit: { code: null, signal: null }, leftovers: [],
  };
  let progress = 0; // progress lines seen
  let lastProgressAt = 0;
  let vmmPid = 0;
  let lastRecovery: { at: number; supervisorMs: number; saveMs: number } | undefined;
  const exited = new Promise<void>((resolve) => child.on('exit', (code, signal) => { r.exit = { code, signal }; resolve(); }));

  let outBuf = '';
  child.stdout!.on('data', (d: Buffer) => {
    outBuf += d.toString('latin1');
    let i;
    while ((i = outBuf.indexOf('\n')) >= 0) {
      const line = outBuf.slice(0, i);
      outBuf = outBuf.slice(i + 1);
      if (line.startsWith('@error')) { r.errors.push(line); continue; }
      if (line.startsWith('@boot') || line.startsWith('@smp') || line === '') continue;
      const m = COUNTER.exec(line);
      if (!m) { r.malformed.push(line); continue; }
      const cpu = Number(m[1]);
      const n = Number(m[2]);
      const last = r.lastN[cpu] ?? 0;
      if (n < last) r.backwards.push(`cpu ${cpu}: ${last} -> ${n}`);
      else if (n === last) r.duplicates++;
      else if (n !== last + o.report) r.backwards.push(`cpu ${cpu}: ${last} -> ${n} (skipped steps)`);
      r.lastN[cpu] = Math.max(last, n);
      progress++;
      lastProgressAt = performance.now();
    }
  });
  let errBuf = '';
  child.stderr!.on('data', (d: Buffer) => {
    const s = d.toString();
    r.stderr += s;
    errBuf += s;
    let i;
    while ((i = errBuf.indexOf('\n')) >= 0) {
      const line = errBuf.slice(0, i);
      errBuf = errBuf.slice(i + 1);
      const ready = READY.exec(line);
      if (ready) vmmPid = Number(ready[1]);
      const rec = RECOVERED.exec(line);
      if (rec) {
        r.recoveryLines++;
        lastRecovery = { at: performance.now(), supervisorMs: Number(rec[2]), saveMs: Number(rec[3]) };
      }
      if (line.includes('restore gen')) r.restoreDebug.push(line);
    }
  });

  const waitFor = async (cond: () => boolean, ms: number, what: string) => {
    const deadline = performance.now() + ms;
    while (!cond()) {
      if (r.exit.code !== null || r.exit.signal !== null) throw new Error(`tsvmm exited while waiting for ${what}: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`);
      if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}; tsvmm's stderr ends:\n${r.stderr.trim().split('\n').slice(-8).join('\n')}`);
      await sleep(1);
    }
  };

  try {
    await waitFor(() => progress >= 2 && vmmPid > 0, 20_000, 'the first progress lines');
    // A liveness bound, not a timing claim (the samples are the measurement): a cold restart on a
    // loaded 2-CPU host was seen to take over 5 s.
    const timeout = o.recoveryTimeoutMs ?? 20_000;
    for (let k = 0; k < o.kills; k++) {
      const min = o.minDelayMs ?? 20;
      const max = o.maxDelayMs ?? 300;
      await sleep(min + Math.random() * (max - min));
      const pid = vmmPid;
      const recBefore = r.recoveryLines;
      const t0 = performance.now();
      process.kill(pid, 'SIGKILL');
      await waitFor(() => r.recoveryLines > recBefore && vmmPid !== pid, timeout, `recovery ${k + 1}`);
      const logAt = lastRecovery!.at;
      await waitFor(() => lastProgressAt > logAt, timeout, `progress after recovery ${k + 1}`);
      r.samples.push({ logMs: logAt - t0, progressMs: lastProgressAt - t0, supervisorMs: lastRecovery!.supervisorMs, saveMs: lastRecovery!.saveMs });
    }
    // A little more progress after the last recovery, then stop.
    const p = progress;
    await waitFor(() => progress > p + 1, timeout, 'progress after the last recovery');
  } finally {
    child.kill('SIGTERM');
    await Promise.race([exited, sleep(5000)]);
    if (r.exit.code === null && r.exit.signal === null) child.kill('SIGKILL');
    await sleep(200);
    r.leftovers = holdersOf(`tsvmm-snap-${name}`);
  }
  return r;
}

export function percentile(xs: number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}
