/**
 * A running `tsvmm run` whose components tests fail in every way issue 4
 * lists (SIGKILL, SIGSEGV, SIGABRT, SIGSTOP, an uncaught exception or a busy
 * loop through the test hook), watching the supervisor's log and the guest's
 * `@` lines. Shared by test/recovery-failures.test.ts, test/recovery-standby.test.ts
 * and bench/recovery.ts.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ChildProcess, spawn } from 'child_process';
import { inject } from '../../contracts/test-hooks';
import { BIN, GUEST } from './tsvmm';

export type Fault = 'SIGKILL' | 'SIGSEGV' | 'SIGABRT' | 'SIGSTOP' | 'throw' | 'loop';
export type ComponentName = 'vmm' | 'driver-domain';

/** The cause the supervisor must record for each fault. */
export const EXPECTED_CAUSE: Record<Fault, string> = {
  SIGKILL: 'signal SIGKILL', SIGSEGV: 'signal SIGSEGV', SIGABRT: 'signal SIGABRT',
  SIGSTOP: 'hang', loop: 'hang', throw: 'exit code 1',
};

export interface RecoveryLine { at: number; component: ComponentName; cause: string; ms: number; warm: boolean; line: string }
export interface HangLine { at: number; component: ComponentName; stillMs: number }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const RECOVERED = /recovered (vmm|driver-domain) \(cause: ([^)]*)\) in ([\d.]+) ms .*?(warm standby|cold restart)/;
const READY = /tsvmm: (vmm|driver-domain) ready \(pid (\d+)\)/;
const STANDBY_READY = /tsvmm: (vmm|driver-domain) standby ready \(pid (\d+)\)/;
const HUNG = /tsvmm: (vmm|driver-domain) hung: no heartbeat for (\d+) ms/;

export class RunningVm {
  readonly child: ChildProcess;
  private stdout = '';
  /**
   * The guest's serial output so far, whole lines only while tsvmm runs: the vmm sends the start of
   * a line once the guest's output is idle (a shell prompt ends no line), and a regex read mid-line
   * would take `done=1` of a `done=100` still being written. After tsvmm exited: all of it.
   */
  get out(): string {
    return this.exit ? this.stdout : this.stdout.slice(0, this.stdout.lastIndexOf('\n') + 1);
  }
  err = '';
  readonly recoveries: RecoveryLine[] = [];
  readonly hangs: HangLine[] = [];
  /** Every guest line and when it arrived (performance.now()). */
  readonly lines: { at: number; line: string }[] = [];
  readonly pid: Record<ComponentName, number> = { vmm: 0, 'driver-domain': 0 };
  /** pid of the latest standby that reported ready, per component (0: none yet). */
  readonly standbyPid: Record<ComponentName, number> = { vmm: 0, 'driver-domain': 0 };
  exit?: { code: number | null; signal: string | null };
  private readonly exited: Promise<void>;
  readonly dir: string;

  /** `bin`: the tsvmm.js to run (another installation's, test/helpers/previous-build.ts). */
  constructor(args: string[], env: Record<string, string> = {}, bin = BIN) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-fault-'));
    this.child = spawn(process.execPath, [bin, 'run', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TSVMM_TEST_HOOKS: '1', ...env },
    });
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => { this.exit = { code, signal }; resolve(); }));
    let ob = '';
    this.child.stdout!.on('data', (d: Buffer) => {
      this.stdout += d.toString('latin1');
      ob += d.toString('latin1');
      let i;
      while ((i = ob.indexOf('\n')) >= 0) { this.lines.push({ at: performance.now(), line: ob.slice(0, i) }); ob = ob.slice(i + 1); }
    });
    let eb = '';
    this.child.stderr!.on('data', (d: Buffer) => {
      this.err += d.toString();
      eb += d.toString();
      let i;
      while ((i = eb.indexOf('\n')) >= 0) {
        const line = eb.slice(0, i);
        eb = eb.slice(i + 1);
        const at = performance.now();
        const r = READY.exec(line);
        if (r) this.pid[r[1] as ComponentName] = Number(r[2]);
        const sb = STANDBY_READY.exec(line);
        if (sb) this.standbyPid[sb[1] as ComponentName] = Number(sb[2]);
        const m = RECOVERED.exec(line);
        if (m) this.recoveries.push({ at, component: m[1] as ComponentName, cause: m[2], ms: Number(m[3]), warm: m[4] === 'warm standby', line });
        const h = HUNG.exec(line);
        if (h) this.hangs.push({ at, component: h[1] as ComponentName, stillMs: Number(h[2]) });
      }
    });
  }

  async waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
    const deadline = performance.now() + ms;
    while (!cond()) {
      if (this.exit) throw new Error(`tsvmm exited (${JSON.stringify(this.exit)}) while waiting for ${what}:\n${this.err.split('\n').slice(-8).join('\n')}`);
      if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}:\n${this.err.split('\n').slice(-8).join('\n')}`);
      await sleep(2);
    }
  }

  /** Guest lines starting with `prefix` that arrived after `since`. */
  count(prefix: string, since = 0): number {
    return this.lines.filter((l) => l.at > since && l.line.startsWith(prefix)).length;
  }

  /**
   * Fails `component` with `fault`, waits for its recovery line and for `progress`
   * more guest lines starting with `progressPrefix` after it. Returns the recovery
   * and the time from the fault to the next guest line (ms).
   */
  async fail(component: ComponentName, fault: Fault, progressPrefix: string, timeoutMs = 10_000): Promise<{
    rec: RecoveryLine; progressMs: number; hang?: HangLine; t0: number; starved: boolean;
    /** CLOCK_MONOTONIC at the fault, comparable with the components' stamps. */
    killedNs: bigint;
  }> {
    const pid = this.pid[component];
    const before = this.recoveries.length;
    const hangsBefore = this.hangs.length;
    const errBefore = this.err.length;
    const t0 = performance.now();
    const killedNs = process.hrtime.bigint();
    try {
      if (fault === 'throw' || fault === 'loop') inject(pid, fault);
      else process.kill(pid, fault);
    } catch (e) {
      throw new Error(`cannot ${fault} the ${component} (pid ${pid}): ${(e as Error).message}; it died on its own?\n${this.err.split('\n').slice(-12).join('\n')}`);
    }
    await this.waitFor(() => this.recoveries.slice(before).some((r) => r.component === component), timeoutMs, `recovery of the ${component} after ${fault}`);
    const rec = this.recoveries.slice(before).find((r) => r.component === component)!;
    await this.waitFor(() => this.pid[component] !== pid, timeoutMs, `a new ${component}`);
    await this.waitFor(() => this.count(progressPrefix, rec.at) > 0, timeoutMs, `guest progress after the ${component} recovered from ${fault}`);
    const next = this.lines.find((l) => l.at > t0 && l.line.startsWith(progressPrefix) && l.at > rec.at) ?? this.lines.find((l) => l.at > t0 && l.line.startsWith(progressPrefix))!;
    const hang = this.hangs.slice(hangsBefore).find((h) => h.component === component);
    const starved = this.err.slice(errBefore).includes(`${component}: no heartbeat for`) ;
    return { rec, progressMs: next.at - t0, hang, t0, starved, killedNs };
  }

  async stop(): Promise<void> {
    if (!this.exit) this.child.kill('SIGTERM');
    await Promise.race([this.exited, sleep(5000)]);
    if (!this.exit) this.child.kill('SIGKILL');
    await this.exited;
  }

  cleanup(): void { fs.rmSync(this.dir, { recursive: true, force: true }); }
}

/** A `tsvmm run` on the verifying blk-loop workload over a fresh image. */
export function blkLoopVm(extra: string[] = [], env: Record<string, string> = {}, opts: { n?: number; report?: number; bin?: string; cmdline?: string } = {}): RunningVm {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-blkimg-'));
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 16 << 20);
  const vm = new RunningVm(['--kernel', GUEST, '--disk', img, ...extra, '--cmdline',
    `workload=blk-loop blk_n=${opts.n ?? 1000} qd=16 mode=seq verify=1 blk_report=${opts.report ?? 100} virtio_irq=1${opts.cmdline ? ` ${opts.cmdline}` : ''}`], env, opts.bin);
  (vm as { imgDir?: string }).imgDir = dir;
  return vm;
}

/** Guest-visible errors in a run's output: @error / @blk-error lines and non-zero error counters. */
export function guestErrors(out: string): string[] {
  const bad: string[] = [];
  for (const l of out.split('\n')) {
    if (/^@(blk-)?error/.test(l)) bad.push(l);
    const m = /^@blk-progress .*errors=(\d+)/.exec(l);
    if (m && m[1] !== '0') bad.push(l);
  }
  return bad;
}
