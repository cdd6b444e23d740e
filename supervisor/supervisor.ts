/**
 * The supervisor: the `tsvmm run` process itself. It creates and holds the
 * long-lived resources (guest RAM memfd, the shared state memfd, the serial
 * output fd), spawns the components with those fds, and turns their
 * reports into tsvmm's exit status.
 */
import * as fs from 'fs';
import * as os from 'os';
import { ChildProcess, spawn } from 'child_process';
import { componentEnv } from './component-env';
import { componentEntry } from './component-entry';
import { native } from '../native/kvm';
import { ComponentMessage, ComponentMessageCodec, SupervisorMessage, SupervisorMessageCodec, VmConfig, VmConfigCodec } from '../proto';
import { DEVICE_PAGE_OFFSET, DEVICE_PAGE_SIZE, FD, STATE_MEMFD_SIZE } from '../contracts/fds';
import { keeper, SnapshotView, SnapState, snapshotSize } from '../contracts/snapshot';
import { Component, StatePage } from '../contracts/state-page';
import { EXIT_NOT_NEEDED } from '../contracts/exit-codes';
import { deviceStdio, HeldDevice, openDevices } from './held-devices';
import { PlatformPage } from '../contracts/platform-page';
import { Control } from './control';
import { RESTART_LIMITS, RestartPolicy } from './restart-policy';

export interface RunResult {
  code: number;
  reason: string;
}

export interface SupervisorOptions {
  /** Called with one line for the user (status, recoveries). */
  log?: (line: string) => void;
  /** vmm restart-loop guard: give up after this many restarted vmms in a row die before resuming the guest (default 3)... */
  vmmMaxFailuresInARow?: number;
  /** ...or after more than this many vmm failures (default 30, env TSVMM_VMM_MAX_RESTARTS) within vmmRestartWindowMs (default 10 s). */
  vmmMaxRestartsPerWindow?: number;
  vmmRestartWindowMs?: number;
  /**
   * Hang detection: a component whose heartbeat (contracts/state-page.ts) has not moved for this
   * long, once it reported ready, is SIGKILLed and recovered with cause `hang`. Default 250 ms
   * (env TSVMM_HANG_TIMEOUT_MS); 0 turns it off.
   */
  hangTimeoutMs?: number;
  /** Keep a warm standby vmm and driver-domain that take over the moment the primary dies (tsvmm run --standby). */
  standby?: boolean;
}

/** One vmm recovery, as the supervisor measured it. */
export interface VmmRecovery {
  cause: string;
  /** From the keeper seeing the vmm die (or the supervisor seeing it exit, if earlier) to the guest resumed. */
  totalMs: number;
  /** The keeper's save. */
  saveMs: number;
  /** From the supervisor seeing the vmm exit to the guest resumed (negative: the standby was faster than the supervisor). */
  restartMs: number;
  /** A warm standby took over (else a new vmm was started cold). */
  warm: boolean;
}

/** One recovery of any component. */
export interface Recovery {
  component: string;
  cause: string;
  /** death -> resumed (vmm) / serving again (driver-domain) */
  ms: number;
  warm?: boolean;
}

type ReadyMsg = Extract<ComponentMessage, { ready: unknown }>['ready'];

const DEFAULT_HANG_TIMEOUT_MS = 250;
/** A warm standby that has not taken over this long after its primary died is replaced by a cold start. */
const STANDBY_TAKEOVER_TIMEOUT_MS = 3000;
/**
 * After a standby took over, its replacement starts this much later: a Node
 * process start is ~100 ms of CPU, which, on a small host, would slow the
 * guest just when it resumes. A second failure inside this window recovers cold.
 */
const STANDBY_RESPAWN_MS = 300;

interface Sched { run: number; wait: number }

/** The main thread's CPU time and run-queue wait (ns), from /proc/PID/task/PID/schedstat. */
function schedstat(pid: number | undefined): Sched | undefined {
  if (!pid) return undefined;
  try {
    const [run, wait] = fs.readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'latin1').split(' ').map(Number);
    return { run, wait };
  } catch {
    return undefined;
  }
}

/** The main thread's scheduler state letter (R, S, D, T, ...), from /proc/PID/task/PID/stat. */
function threadState(pid: number | undefined): string | undefined {
  if (!pid) return undefined;
  try {
    const st = fs.readFileSync(`/proc/${pid}/task/${pid}/stat`, 'latin1');
    return st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

/** A process's state letter (R, S, D, T, Z, ...), from /proc/PID/stat. */
function processState(pid: number): string | undefined {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

/** keeper.c's exit status when its poll() fails (the only exit of a keeper whose vmm may still live). */
const KEEPER_EXIT_POLL_FAILED = 2;
const SIGNAL_NAME: Record<number, string> = Object.fromEntries(Object.entries(os.constants.signals).map(([k, v]) => [v, k]));

export class Supervisor {
  readonly ramFd: number;
  readonly stateFd: number;
  readonly serialFd: number;
  readonly devices: HeldDevice[];
  private readonly page: StatePage;
  private driverDomain?: ChildProcess;
  private ddStandby?: ChildProcess;
  private ddPending?: { cause: string; t0: bigint };
  private ddStandbyFailures = 0;
  /** Every recovery, with cause and time (ms). */
  readonly recoveries: Recovery[] = [];
  /** The control plane: priv-domain and its commands (supervisor/control.ts). */
  control?: Control;
  /** vmm recoveries in detail (they are in `recoveries` too). */
  readonly vmmRecoveries: VmmRecovery[] = [];
  /** Hangs detected: component and how long its heartbeat had been still when it was killed. */
  readonly hangs: { component: string; pid: number; stillMs: number }[] = [];
  /** The vmm's snapshot memfd: its vCPUs' exit journals and what its keeper saves (contracts/snapshot.ts). */
  readonly snapFd: number;
  private readonly snapHeader: SnapshotView;
  /** Live keepers (our children through CLONE_PARENT), reaped by waitExit; pids ever tracked. */
  private readonly keepers = new Set<number>();
  private readonly keepersSeen = new Set<number>();
  /** Each vmm's current keeper (a standby's is dormant until it takes over). */
  private readonly keeperOf = new WeakMap<ChildProcess, number>();
  /** A keeper that died under a running vmm, until the vmm reports its new one. */
  private keeperPending?: { cause: string; t0: bigint; dead: number; vmm: ChildProcess };
  private readonly keeperPolicy = new RestartPolicy('keeper', RESTART_LIMITS.keeper);
  /** Keepers the hang watch found stopped and killed. */
  private readonly keepersStoppedKilled = new Set<number>();
  /** Since when each watched keeper has been seen stopped (state T/t). */
  private readonly keeperStoppedSince = new Map<number, number>();
  private vmmPending?: { cause: string; t0: bigint; dead: ChildProcess; fallback?: NodeJS.Timeout };
  private vmmFailuresInARow = 0;
  private vmmFailureTimes: number[] = [];
  private vmm?: ChildProcess;
  private vmmStandby?: ChildProcess;
  private vmmStandbyFailures = 0;
  /** vmms that reported the guest running (booted or resumed). */
  private readonly vmmRunning = new WeakSet<ChildProcess>();
  /** Children the hang detector killed, and every child's exit once seen. */
  private readonly hangKilled = new WeakSet<ChildProcess>();
  private readonly exits = new WeakMap<ChildProcess, string>();
  /** Hang detection: armed per component once it reported ready. */
  private readonly watched = new Map<ChildProcess, { name: string; slot: Component; last: number; since: number; sched?: Sched; starved?: boolean }>();
  private watchTimer?: NodeJS.Timeout;
  private lastTick = 0;
  private readonly hangTimeoutMs: number;
  private result?: RunResult;
  private resolveDone!: (r: RunResult) => void;
  readonly done: Promise<RunResult>;

  constructor(readonly cfg: VmConfig, private readonly opts: SupervisorOptions = {}) {
    this.ramFd = native.memfdCreate(`tsvmm-ram-${cfg.name}`, cfg.memBytes);
    this.stateFd = native.memfdCreate(`tsvmm-state-${cfg.name}`, STATE_MEMFD_SIZE);
    const state = native.mmap(this.stateFd, STATE_MEMFD_SIZE, 0, true);
    new PlatformPage(state).init();
    const devPage = StatePage.format(new Uint8Array(state, DEVICE_PAGE_OFFSET, DEVICE_PAGE_SIZE));
    this.page = devPage;
    this.devices = openDevices(cfg, devPage);
    this.serialFd = cfg.serialPath ? fs.openSync(cfg.serialPath, 'a') : 1;
    this.snapFd = native.memfdCreate(`tsvmm-snap-${cfg.name}`, snapshotSize(cfg.cpus));
    keeper.snapshotFormat(this.snapFd, cfg.cpus);
    this.snapHeader = SnapshotView.map(this.snapFd, cfg.cpus, true);
    this.hangTimeoutMs = opts.hangTimeoutMs ?? Number(process.env.TSVMM_HANG_TIMEOUT_MS ?? DEFAULT_HANG_TIMEOUT_MS);
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
  }

  start(): void {
    // Control plane (supervisor/control.ts): control page, priv-domain, API commands.
    this.control = new Control(this, this.opts.log);
    this.control.start();
    if (this.devices.length) this.startDriverDomain();
    this.startVmm('boot');
    if (this.hangTimeoutMs > 0) {
      this.lastTick = performance.now();
      const period = Math.max(5, Math.min(50, this.hangTimeoutMs / 5));
      this.watchTimer = setInterval(() => this.checkHeartbeats(), period);
    }
  }

  // ---- hang detection ----

  private arm(child: ChildProcess, name: string, slot: Component): void {
    if (this.hangTimeoutMs <= 0 || process.env.TSVMM_NO_RECOVERY === '1') return;
    this.watched.set(child, { name, slot, last: this.page.heartbeat(slot), since: performance.now(), sched: schedstat(child.pid) });
  }

  /**
   * Every few ms: a component whose heartbeat has not moved for the threshold is hung, unless the
   * kernel says its main thread spent that time waiting for a CPU (a loaded host, not a hang): a
   * stopped or blocked thread neither runs nor waits, a busy loop runs. A starved one gets at most
   * 4x the threshold.
   */
  private checkHeartbeats(): void {
    const now = performance.now();
    // If this loop itself was late, everything may have been starved (a loaded host): don't blame
    // a component for time nobody could run; restart its clock instead.
    const stalled = now - this.lastTick > this.hangTimeoutMs / 2;
    this.lastTick = now;
    this.checkKeepers(now, stalled);
    for (const [child, w] of this.watched) {
      const hb = this.page.heartbeat(w.slot);
      if (hb !== w.last || stalled) { w.last = hb; w.since = now; w.sched = schedstat(child.pid); continue; }
      const still = now - w.since;
      if (still < this.hangTimeoutMs) continue;
      const sched = schedstat(child.pid);
      const ranMs = sched && w.sched ? (sched.run - w.sched.run) / 1e6 : 0;
      const waitedMs = sched && w.sched ? (sched.wait - w.sched.wait) / 1e6 : 0;
      const state = threadState(child.pid);
      const starved = waitedMs > still / 2 && ranMs < this.hangTimeoutMs / 2;
      // 'D': blocked in the kernel (e.g. on the mm's lock while guest RAM faults in on a loaded host).
      if ((starved || state === 'D') && still < 4 * this.hangTimeoutMs) {
        if (!w.starved) this.opts.log?.(`${w.name}: no heartbeat for ${still.toFixed(0)} ms, but its main thread ${starved ? `waited ${waitedMs.toFixed(0)} ms for a CPU` : 'is blocked in the kernel (state D)'} (host overloaded): not a hang yet`);
        w.starved = true;
        continue;
      }
      this.watched.delete(child);
      this.hangKilled.add(child);
      this.hangs.push({ component: w.name, pid: child.pid ?? 0, stillMs: still });
      this.opts.log?.(`${w.name} hung: no heartbeat for ${still.toFixed(0)} ms (threshold ${this.hangTimeoutMs} ms; its main thread ran ${ranMs.toFixed(0)} ms, waited for a CPU ${waitedMs.toFixed(0)} ms, state ${state ?? '?'}); killing pid ${child.pid}`);
      child.kill('SIGKILL');
    }
  }

  /**
   * A keeper has no event loop to beat: it sleeps in poll() until its vmm dies. What can go wrong
   * with it short of dying (which waitExit sees) is being stopped (SIGSTOP: state T), and a stopped
   * keeper cannot save. One stopped for the hang threshold is killed; its death re-arms a new one.
   */
  private checkKeepers(now: number, stalled: boolean): void {
    for (const pid of this.keepers) {
      const st = processState(pid);
      if (st !== 'T' && st !== 't') { this.keeperStoppedSince.delete(pid); continue; }
      const since = this.keeperStoppedSince.get(pid);
      if (since === undefined || stalled) { this.keeperStoppedSince.set(pid, since ?? now); continue; }
      const still = now - since;
      if (still < this.hangTimeoutMs) continue;
      this.keeperStoppedSince.delete(pid);
      this.keepersStoppedKilled.add(pid);
      this.hangs.push({ component: 'keeper', pid, stillMs: still });
      this.opts.log?.(`keeper hung: stopped (state ${st}) for ${still.toFixed(0)} ms (threshold ${this.hangTimeoutMs} ms); killing pid ${pid}`);
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
  }

  private causeOf(child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): string {
    return this.hangKilled.has(child) ? 'hang' : signal ? `signal ${signal}` : `exit code ${code}`;
  }

  /** The cause of `child`'s exit, once it has exited. */
  private whenExited(child: ChildProcess): Promise<string> {
    const seen = this.exits.get(child);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => child.once('exit', (code, signal) => resolve(this.causeOf(child, code, signal))));
  }

  // ---- vmm ----

  /**
   * Starts a vmm: a fresh boot, a cold one that resumes the guest from the
   * snapshot the dead vmm's keeper saved, or a warm standby that waits to do
   * that. A vmm that exits without having reported the guest's exit is
   * recovered that way, never rebooted.
   */
  private startVmm(mode: 'boot' | 'restore' | 'standby'): ChildProcess {
    const env: Record<string, string> = mode === 'restore' ? { TSVMM_RESTORE: '1' } : mode === 'standby' ? { TSVMM_STANDBY: '1' } : {};
    env.TSVMM_VCPUS = String(this.cfg.cpus); // the vmm starts that many vCPU threads first (vmm/early-vcpu-threads.ts)
    const child = this.spawnComponent('vmm', componentEntry('vmm'), deviceStdio(this.devices, false), (code, signal) => {
      this.watched.delete(child);
      if (this.result) return;
      if (child === this.vmmStandby) { this.onVmmStandbyExit(child); return; }
      if (child !== this.vmm || code === EXIT_NOT_NEEDED) return;
      this.onVmmExit(child, this.causeOf(child, code, signal));
    }, env);
    if (mode === 'standby') this.vmmStandby = child;
    else this.vmm = child;
    return child;
  }

  private onVmmExit(dead: ChildProcess, cause: string): void {
    const state = this.snapHeader.state;
    if (state !== SnapState.EMPTY) this.trackKeeper(this.snapHeader.keeperPid, dead);
    if (state === SnapState.SAVED && !this.vmmRunning.has(dead)) this.releaseDeadClaim();
    const keeperPid = this.snapHeader.keeperPid;
    if (state === SnapState.ARMED && this.keepersSeen.has(keeperPid) && !this.keepers.has(keeperPid)) {
      this.finish({ code: 1, reason: `vmm exited (${cause}) while it had no keeper (pid ${keeperPid} died before it and no new one was armed yet): the guest cannot be recovered` });
      return;
    }
    if (state === SnapState.EMPTY) {
      this.finish({ code: 1, reason: `vmm exited unexpectedly (${cause}) before its keeper was armed: the guest cannot be recovered` });
      return;
    }
    if (state === SnapState.STOPPED) {
      // The guest had stopped; its report may still be in flight on the IPC channel.
      setTimeout(() => this.finish({ code: 1, reason: `vmm exited (${cause}) after the guest stopped, without reporting why` }), 200);
      return;
    }
    const now = Date.now();
    const windowMs = this.opts.vmmRestartWindowMs ?? 10_000;
    this.vmmFailureTimes = this.vmmFailureTimes.filter((t) => now - t < windowMs);
    this.vmmFailureTimes.push(now);
    const inARow = this.opts.vmmMaxFailuresInARow ?? 3;
    const perWindow = this.opts.vmmMaxRestartsPerWindow ?? Number(process.env.TSVMM_VMM_MAX_RESTARTS || 30);
    if (this.vmmFailuresInARow >= inARow) {
      this.finish({ code: 1, reason: `vmm recovery failed: ${this.vmmFailuresInARow} restarted vmms in a row died before resuming the guest (last cause: ${cause})` });
      return;
    }
    if (this.vmmFailureTimes.length > perWindow) {
      this.finish({ code: 1, reason: `vmm recovery gave up: ${this.vmmFailureTimes.length} vmm failures within ${windowMs / 1000} s (last cause: ${cause})` });
      return;
    }
    this.vmmFailuresInARow++;
    this.vmmPending = { cause, t0: process.hrtime.bigint(), dead };
    if (this.vmmStandby) {
      // Warm path: the standby claims the keeper's snapshot by itself (futex). Go cold if it does not.
      const standby = this.vmmStandby;
      this.vmmPending.fallback = setTimeout(() => {
        if (this.result || this.vmmStandby !== standby) return;
        this.opts.log?.(`vmm standby (pid ${standby.pid}) did not take over within ${STANDBY_TAKEOVER_TIMEOUT_MS} ms; starting a vmm cold`);
        this.vmmStandby = undefined;
        standby.kill('SIGKILL');
        this.whenExited(standby).then(() => { if (!this.result && this.vmmPending) { this.releaseDeadClaim(); this.startVmm('restore'); } });
      }, STANDBY_TAKEOVER_TIMEOUT_MS);
      return;
    }
    this.startVmm('restore');
  }

  /** A vmm that claimed the saved snapshot died before resuming it: let the next one claim it. */
  private releaseDeadClaim(): void {
    const gen = this.snapHeader.generation;
    if (this.snapHeader.state === SnapState.SAVED && this.snapHeader.claimGen === gen) this.snapHeader.releaseClaim(gen);
  }

  private onVmmStandbyExit(child: ChildProcess): void {
    this.vmmStandby = undefined;
    if (this.vmmPending) {
      // It died while taking over: whatever it claimed is free again, and a cold vmm finishes the job.
      this.releaseDeadClaim();
      clearTimeout(this.vmmPending.fallback);
      this.startVmm('restore');
    }
    if (++this.vmmStandbyFailures > 5) {
      this.opts.log?.(`vmm standby keeps failing (last: ${this.exits.get(child)}); running without one`);
      return;
    }
    setTimeout(() => { if (!this.result && !this.vmmStandby && this.opts.standby) this.startVmm('standby'); }, 200);
  }

  private onVmmReady(child: ChildProcess, r: ReadyMsg): void {
    if (r.keeperPid) this.trackKeeper(r.keeperPid, child); // a standby's is dormant until it takes over
    if (r.standby) return;
    const readyAt = process.hrtime.bigint();
    let p = this.vmmPending;
    const warm = child === this.vmmStandby;
    if (warm) {
      // The standby took over (possibly before we saw the primary's exit).
      const dead = this.vmm!;
      this.vmmStandby = undefined;
      this.vmm = child;
      this.vmmStandbyFailures = 0;
      if (p) clearTimeout(p.fallback);
      else p = { cause: '', t0: readyAt, dead };
    } else if (child !== this.vmm) return;
    this.vmmRunning.add(child);
    this.vmmFailuresInARow = 0;
    this.vmmPending = undefined;
    this.arm(child, 'vmm', Component.Vmm);
    if (this.opts.standby && !this.vmmStandby) {
      setTimeout(() => { if (!this.result && !this.vmmStandby) this.startVmm('standby'); }, p ? STANDBY_RESPAWN_MS : 0);
    }
    if (!p) return;
    const resumed = r.resumedNs ? BigInt(r.resumedNs) : readyAt;
    // From whichever saw the death first: the keeper (its pidfd) or the supervisor (SIGCHLD).
    const died = r.diedNs && BigInt(r.diedNs) < p.t0 ? BigInt(r.diedNs) : p.t0;
    const totalMs = Number(resumed - died) / 1e6;
    const restartMs = Number(resumed - p.t0) / 1e6;
    const saveMs = r.diedNs && r.savedNs ? (r.savedNs - r.diedNs) / 1e6 : 0;
    const pending = p;
    void this.whenExited(pending.dead).then((exitCause) => {
      const cause = pending.cause || exitCause;
      this.vmmRecoveries.push({ cause, totalMs, saveMs, restartMs, warm });
      this.recoveries.push({ component: 'vmm', cause, ms: totalMs, warm });
      this.opts.log?.(`recovered vmm (cause: ${cause}) in ${totalMs.toFixed(warm ? 2 : 1)} ms (keeper save ${saveMs.toFixed(2)} ms, ` +
        `${warm ? 'warm standby' : 'cold restart'}: exit seen to resumed ${restartMs.toFixed(warm ? 2 : 1)} ms)`);
    });
  }

  /** A keeper is the supervisor's child (CLONE_PARENT): reap it when it exits, kill it when stopping. */
  private trackKeeper(pid: number, vmm: ChildProcess): void {
    if (!pid) return;
    if (this.exits.has(vmm)) {
      // A dead vmm's keeper is saving (or saved): it is still that vmm's, but no longer anyone's to re-arm.
      if (!this.keeperOf.has(vmm)) this.keeperOf.set(vmm, pid);
    } else {
      this.keeperOf.set(vmm, pid);
    }
    if (this.keepersSeen.has(pid)) return;
    this.keepersSeen.add(pid);
    this.keepers.add(pid);
    const gone = (r: { code?: number; signal?: number; error?: string }) => {
      this.keepers.delete(pid);
      this.keeperStoppedSince.delete(pid);
      const hung = this.keepersStoppedKilled.delete(pid);
      // A keeper exits by itself only when its work is over: 0 (the guest stopped, or its vmm died while
      // it was dormant), 1 (its save failed: the vmm died), 3 (the supervisor died). A signal, or 2 (its
      // poll failed), leaves its vmm without one.
      if (!hung && r.signal === undefined && r.code !== KEEPER_EXIT_POLL_FAILED) return;
      this.onKeeperExit(pid, vmm, hung ? 'hang' : r.signal !== undefined ? `signal ${SIGNAL_NAME[r.signal] ?? r.signal}` : `exit code ${r.code}`);
    };
    keeper.waitExit(pid).then(gone, (e: Error) => gone({ error: e.message }));
  }

  /**
   * A keeper exited. That is its job once its vmm died (it saved, lingered and went), or when the
   * guest stopped; a dormant standby's keeper goes with its standby. Any other exit leaves a
   * running vmm unprotected: the next death of that vmm would lose the guest. The vmm clones a new
   * keeper on request (ArmKeeper); a standby that lost its dormant keeper is replaced.
   */
  private onKeeperExit(pid: number, vmm: ChildProcess, cause: string): void {
    if (this.result || this.keeperOf.get(vmm) !== pid || this.exits.has(vmm)) return;
    // Its vmm may be dying at this very moment: a keeper that started saving did its job.
    if (this.snapHeader.keeperPid === pid && this.snapHeader.state !== SnapState.ARMED) return;
    if (vmm === this.vmmStandby) {
      this.opts.log?.(`keeper (pid ${pid}) of the vmm standby (pid ${vmm.pid}) died (${cause}); replacing the standby`);
      vmm.kill('SIGKILL');
      return;
    }
    if (vmm !== this.vmm || !this.vmmRunning.has(vmm)) return;
    this.opts.log?.(`keeper (pid ${pid}) of vmm pid ${vmm.pid} died (${cause}): the vmm is unprotected; arming a new keeper`);
    this.keeperPending = { cause, t0: process.hrtime.bigint(), dead: pid, vmm };
    this.armKeeper();
  }

  /** Asks the running vmm for a new keeper (after the restart policy's delay). */
  private armKeeper(): void {
    const p = this.keeperPending;
    if (!p) return;
    const d = this.keeperPolicy.failed(p.cause);
    const delay = 'delayMs' in d ? d.delayMs : 0;
    const ask = () => {
      if (this.result || this.keeperPending !== p || this.exits.has(p.vmm)) return;
      this.sendTo(p.vmm, { armKeeper: { deadPid: p.dead } });
    };
    if (delay) setTimeout(ask, delay); else ask();
  }

  private onKeeperArmed(child: ChildProcess, k: { pid: number; error?: string }): void {
    const p = this.keeperPending;
    if (!p || p.vmm !== child) return;
    if (!k.pid) {
      this.opts.log?.(`vmm pid ${child.pid} could not arm a new keeper: ${k.error}; retrying`);
      this.armKeeper();
      return;
    }
    this.keeperPending = undefined;
    this.keeperPolicy.succeeded();
    this.trackKeeper(k.pid, child);
    const ms = Number(process.hrtime.bigint() - p.t0) / 1e6;
    this.recoveries.push({ component: 'keeper', cause: p.cause, ms });
    this.opts.log?.(`recovered keeper (cause: ${p.cause}) in ${ms.toFixed(1)} ms (new keeper pid ${k.pid} for vmm pid ${child.pid})`);
  }

  private sendTo(child: ChildProcess, msg: SupervisorMessage): void {
    if (!child.connected) return;
    try {
      child.send({ pb: Buffer.from(SupervisorMessageCodec.encode(msg)).toString('base64') }, () => undefined);
    } catch { /* it died: its exit is handled */ }
  }

  /** pids of the keepers still alive (tests check none is left behind). */
  get keeperPids(): number[] { return [...this.keepers]; }

  /** pid of the running vmm's keeper (the one that saves it if it dies), if it has one. */
  get keeperPid(): number | undefined {
    const pid = this.vmm && this.keeperOf.get(this.vmm);
    return pid && this.keepers.has(pid) ? pid : undefined;
  }

  /** pid of the running driver-domain. */
  get driverDomainPid(): number | undefined { return this.driverDomain?.pid; }

  // ---- driver-domain ----

  /**
   * The driver-domain holds no state of its own (queue progress is in the
   * state page; kicks wait in their eventfds), so a dead one is simply
   * started again (or its warm standby takes over) and re-attaches.
   */
  private startDriverDomain(standbyFor?: number): ChildProcess {
    const child = this.spawnComponent('driver-domain', componentEntry('driver-domain'), deviceStdio(this.devices, true), (code, signal) => {
      this.watched.delete(child);
      if (this.result) return;
      if (child === this.ddStandby) {
        this.ddStandby = undefined;
        if (++this.ddStandbyFailures > 5) { this.opts.log?.('driver-domain standby keeps failing; running without one'); return; }
        setTimeout(() => this.startDdStandby(), 200);
        return;
      }
      if (child !== this.driverDomain) return;
      const cause = this.causeOf(child, code, signal);
      this.ddPending = { cause, t0: process.hrtime.bigint() };
      if (this.ddStandby) {
        // Warm: the standby saw the death on its pidfd and is (or soon is) serving.
        this.driverDomain = this.ddStandby;
        this.ddStandby = undefined;
      } else {
        this.driverDomain = this.startDriverDomain();
      }
      // Block I/O that io_uring does not serve inline (large transfers, the thread-pool fallback) runs
      // on libuv's pool: give the driver-domain a deep one.
    }, { UV_THREADPOOL_SIZE: '64', ...(standbyFor ? { TSVMM_STANDBY_FOR: String(standbyFor) } : {}) });
    if (standbyFor) this.ddStandby = child;
    else this.driverDomain = child;
    return child;
  }

  private startDdStandby(): void {
    if (this.result || !this.opts.standby || this.ddStandby || !this.driverDomain?.pid) return;
    this.startDriverDomain(this.driverDomain.pid);
  }

  private onDriverDomainReady(child: ChildProcess, r: ReadyMsg): void {
    if (r.standby) return;
    const readyAt = process.hrtime.bigint();
    if (child === this.ddStandby) {
      // Took over before we saw the primary's exit.
      const dead = this.driverDomain!;
      this.ddStandby = undefined;
      this.driverDomain = child;
      void this.whenExited(dead).then((cause) => this.recordDd(cause, readyAt, r, true));
    } else if (child === this.driverDomain && this.ddPending) {
      this.recordDd(this.ddPending.cause, this.ddPending.t0, r, r.warm === true);
    } else if (child !== this.driverDomain) return;
    this.ddPending = undefined;
    this.ddStandbyFailures = r.warm ? 0 : this.ddStandbyFailures;
    this.arm(child, 'driver-domain', Component.DriverDomain);
    if (this.opts.standby) setTimeout(() => this.startDdStandby(), r.warm ? STANDBY_RESPAWN_MS : 0);
  }

  private recordDd(cause: string, t0: bigint, r: ReadyMsg, warm: boolean): void {
    const resumed = r.resumedNs ? BigInt(r.resumedNs) : process.hrtime.bigint();
    const died = r.diedNs && BigInt(r.diedNs) < t0 ? BigInt(r.diedNs) : t0;
    const ms = Number(resumed - died) / 1e6;
    this.recoveries.push({ component: 'driver-domain', cause, ms, warm });
    this.opts.log?.(`recovered driver-domain (cause: ${cause}) in ${ms.toFixed(warm ? 2 : 1)} ms (${warm ? 'warm standby' : 'cold restart'})`);
  }

  /** pid of the running vmm (for users and tests that kill it). */
  get vmmPid(): number | undefined { return this.vmm?.pid; }

  private spawnComponent(
    name: string, script: string, extraFds: (number | 'ignore')[],
    onExit: (code: number | null, signal: NodeJS.Signals | null) => void,
    extraEnv: Record<string, string> = {},
  ): ChildProcess {
    const stdio: (number | 'ignore' | 'inherit' | 'ipc')[] = ['inherit', 'inherit', 'inherit', 'ipc', this.ramFd, this.stateFd, this.serialFd];
    if (name === 'vmm') stdio[FD.SNAPSHOT] = this.snapFd;
    extraFds.forEach((fd, i) => { if (i >= stdio.length) stdio[i] = fd; });
    const child = spawn(process.execPath, [script], {
      stdio: name === 'vmm' ? stdio : ['ignore', ...stdio.slice(1)],
      env: componentEnv({ TSVMM_CONFIG: Buffer.from(VmConfigCodec.encode(this.cfg)).toString('base64'), ...extraEnv }),
    });
    child.on('exit', (code, signal) => {
      this.exits.set(child, this.causeOf(child, code, signal));
      onExit(code, signal);
    });
    child.on('message', (m: { pb?: string }) => {
      if (typeof m?.pb !== 'string') return;
      this.onMessage(name, ComponentMessageCodec.decode(Buffer.from(m.pb, 'base64')), child);
    });
    return child;
  }

  private onMessage(name: string, m: ComponentMessage, child: ChildProcess): void {
    if ('ready' in m && m.ready) {
      const r = m.ready;
      this.opts.log?.(`${name}${r.standby ? ' standby' : ''} ready (pid ${r.pid})`);
      if (name === 'vmm') this.onVmmReady(child, r);
      else if (name === 'driver-domain') this.onDriverDomainReady(child, r);
    }
    else if ('keeperArmed' in m && m.keeperArmed) this.onKeeperArmed(child, m.keeperArmed);
    else if ('guestExit' in m && m.guestExit) this.finish({ code: m.guestExit.code, reason: m.guestExit.reason });
    else if ('fatal' in m && m.fatal) {
      if ((child === this.vmmStandby && !this.vmmPending) || child === this.ddStandby) {
        // A standby that failed to build: the primary is fine; drop it (its exit schedules a new one).
        this.opts.log?.(`${name} standby failed: ${m.fatal.message}`);
        child.kill('SIGKILL');
        return;
      }
      this.finish({ code: 1, reason: m.fatal.message });
    }
  }

  private finish(r: RunResult): void {
    if (this.result) return;
    this.result = r;
    if (this.watchTimer) clearInterval(this.watchTimer);
    // Keepers first: a keeper that saw its vmm die would save a snapshot nobody needs.
    for (const pid of this.keepers) { try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ } }
    this.vmmStandby?.kill('SIGKILL');
    this.vmm?.kill('SIGKILL');
    this.ddStandby?.kill('SIGKILL');
    this.driverDomain?.kill('SIGKILL');
    void (this.control?.stop(r) ?? Promise.resolve()).then(() => this.resolveDone(r));
  }

  stop(reason: string): void {
    this.finish({ code: 130, reason });
  }
}
