/**
 * The supervisor's side of the VM's guardian (supervisor/guardian-main.ts), the process that starts
 * a new supervisor when this one dies: every supervisor makes sure one runs for as long as it does.
 *   - a supervisor started by a guardian (an adopter: TSVMM_GUARDIAN_PID is its parent) watches that
 *     one; any other starts one, detached (its own session: a Ctrl-C to `tsvmm run` does not reach it);
 *   - a guardian that dies while the VM runs is replaced (logged);
 *   - when the VM ends the supervisor sends it SIGTERM (it would exit by itself once the supervisor
 *     is gone and the run record with it).
 */
import * as fs from 'fs';
import * as path from 'path';
import { spawn } from 'child_process';
import { native } from '../native/kvm';
import { describeExit, NativePidfd } from '../contracts/pidfd';
import { componentEnv } from './component-env';
import { componentExecArgv } from '../contracts/v8-flags';
import { startPhase } from '../contracts/start-trace';

const pidfd = native as unknown as NativePidfd & { pidfdOpen(pid: number): number };
const GUARDIAN_ENTRY = path.resolve(__dirname, '..', 'supervisor', 'guardian-main.js'); // from dist/supervisor or the CLI's bundle in dist/cli
/** A guardian that died is replaced after this (one that dies at once is not restarted in a tight loop). */
const RESTART_MS = 100;
/** How often a guardian that is our parent (not a child: no 'exit' event) is checked. */
const PARENT_POLL_MS = 200;
/** The guardian's threshold for the supervisor's beat is this many of the VM's hang thresholds, and at least SUPERVISOR_HANG_MIN_MS. */
const SUPERVISOR_HANG_FACTOR = 8;
const SUPERVISOR_HANG_MIN_MS = 2000;

/**
 * How long the supervisor's beat (Component.Supervisor in the state page, bumped with each scrub of
 * it) may stand still before its guardian judges it hung; 0 (the VM's hang detection off): never.
 * Longer than a component's: the supervisor's event loop carries a recovery's synchronous work.
 */
export function supervisorHangMs(vmHangMs: number): number {
  return vmHangMs > 0 ? Math.max(SUPERVISOR_HANG_MIN_MS, SUPERVISOR_HANG_FACTOR * vmHangMs) : 0;
}

export class Guardian {
  private current?: { pid: number; fd: number };
  private stopped = false;

  /** `stateFd`: the VM's state memfd, whose supervisor beat the guardian watches for `hangMs` (supervisorHangMs). */
  constructor(private readonly name: string, private readonly log: (line: string) => void, private readonly stateFd: number, private readonly hangMs: number) {}

  get pid(): number | undefined { return this.current?.pid; }

  start(): void {
    const parent = Number(process.env.TSVMM_GUARDIAN_PID);
    if (parent > 0 && parent === process.ppid) this.watchParent(parent);
    else this.spawnOne();
  }

  private spawnOne(): void {
    if (this.stopped) return;
    const env = componentEnv({ TSVMM_SUPERVISOR_HANG_MS: String(this.hangMs) });
    delete env.TSVMM_GUARDIAN_PID;
    try {
      // fd 3: the state memfd (GUARDIAN_STATE_FD), where it watches the supervisors' beat.
      const child = spawn(process.execPath, [...componentExecArgv('guardian'), GUARDIAN_ENTRY, this.name, String(process.pid)], {
        detached: true, stdio: ['ignore', 'inherit', 'inherit', this.stateFd], env, cwd: path.dirname(GUARDIAN_ENTRY),
      });
      child.on('error', (e) => this.log(`cannot start the VM's guardian: ${e.message}; if this supervisor dies, the VM ends`));
      child.unref();
      const pid = child.pid;
      startPhase('supervisor', `spawned the guardian (pid ${pid})`);
      if (!pid) return;
      // Its pidfd: how signalling it reaches exactly it (stop); its death comes as our child's exit.
      const fd = pidfd.pidfdOpen(pid);
      this.current = { pid, fd };
      child.on('exit', (code, sig) => {
        if (fd >= 0) { try { fs.closeSync(fd); } catch { /* closed */ } }
        if (this.current?.pid === pid) this.current = undefined;
        this.died(pid, sig ? `signal ${sig}` : `exit code ${code}`);
      });
    } catch (e) {
      this.log(`cannot start the VM's guardian: ${(e as Error).message}; if this supervisor dies, the VM ends`);
    }
  }

  /** The guardian that started us: polled through a pidfd (a blocking wait would hold a libuv pool thread for good). */
  private watchParent(pid: number): void {
    const fd = pidfd.pidfdOpen(pid);
    if (fd < 0) { this.died(pid, 'exited, status unknown'); return; }
    this.current = { pid, fd };
    const timer = setInterval(() => {
      if (this.stopped) { clearInterval(timer); return; }
      if (pidfd.pollIn(fd, 0) === 0) return;
      clearInterval(timer);
      const cause = describeExit(pidfd.pidfdExit(fd, pid));
      try { fs.closeSync(fd); } catch { /* closed */ }
      if (this.current?.fd === fd) this.current = undefined;
      this.died(pid, cause);
    }, PARENT_POLL_MS);
    timer.unref();
  }

  private died(pid: number, cause: string): void {
    if (this.stopped) return;
    this.log(`the VM's guardian (pid ${pid}) died (${cause}): starting a new one`);
    setTimeout(() => this.spawnOne(), RESTART_MS).unref();
  }

  /** The VM ended: the guardian goes too. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.current && this.current.fd >= 0) pidfd.pidfdSignal(this.current.fd, 15);
  }
}
