/**
 * The supervisor: the `tsvmm run` process itself. It creates and holds the
 * long-lived resources (guest RAM memfd, the shared state memfd, the serial
 * output fd), spawns the components with those fds, and turns their
 * reports into tsvmm's exit status.
 */
import * as fs from 'fs';
import * as path from 'path';
import { ChildProcess, spawn } from 'child_process';
import { native } from '../native/kvm';
import { ComponentMessage, ComponentMessageCodec, VmConfig, VmConfigCodec } from '../proto';
import { DEVICE_PAGE_OFFSET, FD, STATE_MEMFD_SIZE } from '../vmm/fds';
import { keeper, SnapshotView, SnapState, snapshotSize } from './snapshot';
import { StatePage } from '../devices/state-page';
import { deviceStdio, HeldDevice, openDevices } from './devices';
import { PlatformPage } from '../vmm/platform-page';

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
}

/** One vmm recovery, as the supervisor measured it. */
export interface VmmRecovery {
  cause: string;
  /** From the keeper seeing the vmm die to the new vmm reporting the guest resumed. */
  totalMs: number;
  /** The keeper's save. */
  saveMs: number;
  /** From the supervisor seeing the vmm exit to the new vmm's ready. */
  restartMs: number;
}

const DIST = path.resolve(__dirname, '..');

export class Supervisor {
  readonly ramFd: number;
  readonly stateFd: number;
  readonly serialFd: number;
  readonly devices: HeldDevice[];
  private driverDomain?: ChildProcess;
  /** Restarts of the driver-domain, with cause and time to ready. */
  readonly recoveries: { component: string; cause: string; ms: number }[] = [];
  /** vmm recoveries in detail (they are in `recoveries` too). */
  readonly vmmRecoveries: VmmRecovery[] = [];
  /** The vmm's snapshot memfd: its vCPUs' exit journals and what its keeper saves (recovery/snapshot.ts). */
  readonly snapFd: number;
  private readonly snapHeader: SnapshotView;
  /** Live keepers (our children through CLONE_PARENT), reaped by waitExit; pids ever tracked. */
  private readonly keepers = new Set<number>();
  private readonly keepersSeen = new Set<number>();
  private vmmPending?: { cause: string; t0: bigint };
  private vmmFailuresInARow = 0;
  private vmmFailureTimes: number[] = [];
  private vmm?: ChildProcess;
  private result?: RunResult;
  private resolveDone!: (r: RunResult) => void;
  readonly done: Promise<RunResult>;

  constructor(readonly cfg: VmConfig, private readonly opts: SupervisorOptions = {}) {
    this.ramFd = native.memfdCreate(`tsvmm-ram-${cfg.name}`, cfg.memBytes);
    this.stateFd = native.memfdCreate(`tsvmm-state-${cfg.name}`, STATE_MEMFD_SIZE);
    const state = native.mmap(this.stateFd, STATE_MEMFD_SIZE, 0, true);
    new PlatformPage(state).init();
    const devPage = StatePage.format(new Uint8Array(state, DEVICE_PAGE_OFFSET, STATE_MEMFD_SIZE - DEVICE_PAGE_OFFSET));
    this.devices = openDevices(cfg, devPage);
    this.serialFd = cfg.serialPath ? fs.openSync(cfg.serialPath, 'a') : 1;
    this.snapFd = native.memfdCreate(`tsvmm-snap-${cfg.name}`, snapshotSize(cfg.cpus));
    keeper.snapshotFormat(this.snapFd, cfg.cpus);
    this.snapHeader = SnapshotView.map(this.snapFd, cfg.cpus, true);
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
  }

  start(): void {
    if (this.devices.length) this.startDriverDomain();
    this.startVmm();
  }

  /**
   * Starts a vmm: a fresh boot, or (restore) one that resumes the guest from
   * the snapshot the dead vmm's keeper saved. A vmm that exits without having
   * reported the guest's exit is recovered that way, never rebooted.
   */
  private startVmm(restore = false): void {
    const child = this.spawnComponent('vmm', path.join(DIST, 'vmm', 'main.js'), deviceStdio(this.devices, false), (code, signal) => {
      if (this.result || child !== this.vmm) return;
      this.onVmmExit(signal ? `signal ${signal}` : `exit code ${code}`);
    }, restore ? { TSVMM_RESTORE: '1' } : {});
    this.vmm = child;
  }

  private onVmmExit(cause: string): void {
    const state = this.snapHeader.state;
    if (state !== SnapState.EMPTY) this.trackKeeper(this.snapHeader.keeperPid);
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
    this.vmmPending = { cause, t0: process.hrtime.bigint() };
    this.startVmm(true);
  }

  private onVmmReady(r: { keeperPid?: number; diedNs?: number; savedNs?: number }): void {
    if (r.keeperPid) this.trackKeeper(r.keeperPid);
    this.vmmFailuresInARow = 0;
    const p = this.vmmPending;
    if (!p) return;
    this.vmmPending = undefined;
    const now = process.hrtime.bigint();
    const restartMs = Number(now - p.t0) / 1e6;
    // From whichever saw the death first: the keeper (its pidfd) or the supervisor (SIGCHLD).
    const died = r.diedNs && BigInt(r.diedNs) < p.t0 ? BigInt(r.diedNs) : p.t0;
    const totalMs = Number(now - died) / 1e6;
    const saveMs = r.diedNs && r.savedNs ? (r.savedNs - r.diedNs) / 1e6 : 0;
    this.vmmRecoveries.push({ cause: p.cause, totalMs, saveMs, restartMs });
    this.recoveries.push({ component: 'vmm', cause: p.cause, ms: totalMs });
    this.opts.log?.(`recovered vmm (cause: ${p.cause}) in ${totalMs.toFixed(1)} ms (keeper save ${saveMs.toFixed(2)} ms, exit seen to resumed ${restartMs.toFixed(1)} ms)`);
  }

  /** A keeper is the supervisor's child (CLONE_PARENT): reap it when it exits, kill it when stopping. */
  private trackKeeper(pid: number): void {
    if (!pid || this.keepersSeen.has(pid)) return;
    this.keepersSeen.add(pid);
    this.keepers.add(pid);
    keeper.waitExit(pid).then(() => this.keepers.delete(pid), () => this.keepers.delete(pid));
  }

  /** pids of the keepers still alive (tests check none is left behind). */
  get keeperPids(): number[] { return [...this.keepers]; }

  /** pid of the running driver-domain. */
  get driverDomainPid(): number | undefined { return this.driverDomain?.pid; }

  /**
   * The driver-domain holds no state of its own (queue progress is in the
   * state page; kicks wait in their eventfds), so a dead one is simply
   * started again and re-attaches.
   */
  private startDriverDomain(cause?: string): void {
    const t0 = process.hrtime.bigint();
    const child = this.spawnComponent('driver-domain', path.join(DIST, 'driver-domain', 'main.js'), deviceStdio(this.devices, true), (code, signal) => {
      if (this.result || child !== this.driverDomain) return;
      this.startDriverDomain(signal ? `signal ${signal}` : `exit code ${code}`);
    });
    this.driverDomain = child;
    if (cause) {
      child.once('message', () => {
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        this.recoveries.push({ component: 'driver-domain', cause, ms });
        this.opts.log?.(`recovered driver-domain (cause: ${cause}) in ${ms.toFixed(1)} ms`);
      });
    }
  }

  /** pid of the running vmm (for users and tests that kill it). */
  get vmmPid(): number | undefined { return this.vmm?.pid; }

  private spawnComponent(
    name: string, script: string, extraFds: (number | 'ignore')[],
    onExit?: (code: number | null, signal: NodeJS.Signals | null) => void,
    extraEnv: Record<string, string> = {},
  ): ChildProcess {
    const stdio: (number | 'ignore' | 'inherit' | 'ipc')[] = ['inherit', 'inherit', 'inherit', 'ipc', this.ramFd, this.stateFd, this.serialFd];
    if (name === 'vmm') stdio[FD.SNAPSHOT] = this.snapFd;
    extraFds.forEach((fd, i) => { if (i >= stdio.length) stdio[i] = fd; });
    const child = spawn(process.execPath, [script], {
      stdio: name === 'vmm' ? stdio : ['ignore', ...stdio.slice(1)],
      env: {
        ...process.env, TSVMM_CONFIG: Buffer.from(VmConfigCodec.encode(this.cfg)).toString('base64'),
        UV_THREADPOOL_SIZE: '64', ...extraEnv,
      },
    });
    if (onExit) {
      child.on('exit', onExit);
      child.on('message', (m: { pb?: string }) => {
        if (typeof m?.pb !== 'string') return;
        this.onMessage(name, ComponentMessageCodec.decode(Buffer.from(m.pb, 'base64')));
      });
      return child;
    }
    child.on('message', (m: { pb?: string }) => {
      if (typeof m?.pb !== 'string') return;
      this.onMessage(name, ComponentMessageCodec.decode(Buffer.from(m.pb, 'base64')));
    });
    child.on('exit', (code, signal) => {
      if (this.result) return;
      this.finish({ code: 1, reason: `${name} exited unexpectedly (${signal ? `signal ${signal}` : `code ${code}`})` });
    });
    return child;
  }

  private onMessage(name: string, m: ComponentMessage): void {
    if ('ready' in m && m.ready) {
      this.opts.log?.(`${name} ready (pid ${m.ready.pid})`);
      if (name === 'vmm') this.onVmmReady(m.ready);
    }
    else if ('guestExit' in m && m.guestExit) this.finish({ code: m.guestExit.code, reason: m.guestExit.reason });
    else if ('fatal' in m && m.fatal) this.finish({ code: 1, reason: m.fatal.message });
  }

  private finish(r: RunResult): void {
    if (this.result) return;
    this.result = r;
    // Keepers first: a keeper that saw its vmm die would save a snapshot nobody needs.
    for (const pid of this.keepers) { try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ } }
    this.vmm?.kill('SIGKILL');
    this.driverDomain?.kill('SIGKILL');
    this.resolveDone(r);
  }

  stop(reason: string): void {
    this.finish({ code: 130, reason });
  }
}
