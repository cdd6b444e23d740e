/**
 * The supervisor's side of the control plane (the relay). It
 *   - formats the control page (contracts/control-page.ts) before any component starts;
 *   - relays every component's pid, state, start time, restarts and recoveries to the
 *     priv-domain (ControlStatus, on change and once a second, all of it after each priv-domain
 *     start);
 *   - executes its commands (ControlRequest): kill COMPONENT [SIGNAL], pause, resume, stop (the
 *     power button, then a hard stop after a timeout), power-button, update, snapshot.
 * It sees the supervisor only through ControlTarget, and reaches the priv-domain (whose lifecycle
 * is supervisor/priv-domain-lifecycle.ts) only through a PrivChannel.
 */
import * as fs from 'fs';
import * as path from 'path';
import {
  ComponentStatus, ControlReply, ControlRequest, ControlStatus, GuestState, HangKillRecord, RecoveryRecord, StandbyStatus,
  SupervisorMessage, TakeoverRecord, VmConfig,
} from '../proto';
import { ControlPage } from '../contracts/control-page';
import { mkdirPrivate, vmPaths, VmPaths, writeSupervisorPid } from '../contracts/paths';
import type { Recovery, RunResult } from './lifecycle';
import { KILL_COMPONENTS, KillComponent, killSignal } from '../contracts/signals';
import { native } from '../native/kvm';
import { ProcessPrivileges, processPrivileges, unreachableBy } from '../contracts/confinement';
import type { HeldFds } from './spawn';

const STATUS_MS = 100;
/** How long the priv-domain gets to record the VM's end before it is killed. */
const FINISH_TIMEOUT_MS = 2000;
const PAUSE_TIMEOUT_MS = 3000;

/** Process start time (unix seconds) from /proc, or undefined. */
const bootTime = (() => {
  try {
    const m = /^btime (\d+)$/m.exec(fs.readFileSync('/proc/stat', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch { return undefined; }
})();
const HZ = 100;
const startTimes = new Map<number, number>();
export function processStartTime(pid: number): number | undefined {
  if (!pid || bootTime === undefined) return undefined;
  const known = startTimes.get(pid);
  if (known !== undefined) return known;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const t = bootTime + Number(fields[19]) / HZ;
    if (startTimes.size > 256) startTimes.clear();
    startTimes.set(pid, t);
    return t;
  } catch { return undefined; }
}

/** The components the relay reports and signals. */
export type ControlledComponent = KillComponent;

/** What the relay needs of the supervisor, and nothing more. */
export interface ControlTarget {
  readonly cfg: VmConfig;
  readonly stateFd: number;
  /** The VM has virtio devices (so a driver-domain). */
  readonly hasDevices: boolean;
  /** Every recovery so far, in order (appended to, never rewritten). */
  readonly recoveries: readonly Recovery[];
  /** Every hang kill and every standby takeover so far, in order (appended to, never rewritten). */
  readonly hangs: readonly { component: string; pid: number; stillMs: number; evidence: string; at: number }[];
  readonly takeovers: readonly TakeoverRecord[];
  /** The standbys (--standby) and the guest's state, as ControlStatus carries them. */
  standbys(): StandbyStatus[];
  readonly guestState: GuestState;
  pidOf(component: ControlledComponent): number | undefined;
  stop(reason: string): void;
  /** tsvmm stop: the power button, then a hard stop after the timeout (or at once with force). */
  requestStop(via: string, o: { force?: boolean; timeoutMs?: number }): string;
  /** POST /v1/vm/power-button: the ACPI power button's event and interrupt. */
  pressPowerButton(): void;
  /** tsvmm update: vmm and/or driver-domain replaced by the installed build (not the priv-domain: see execute). */
  update(component: string): Promise<{ vmmPauseMs?: number; ddMs?: number }>;
  /** tsvmm snapshot: write the VM into `dir` (absolute), then resume it or stop it. */
  snapshot(dir: string, stop: boolean): Promise<{ pauseMs: number; ramDataBytes: number }>;
  /** Adopt mode: the run this supervisor took over from a dead one (supervisor/adopt.ts). */
  readonly adoption?: { runId: string; supervisors: number };
  /** The fds and confinement the supervisor holds (the relay binds the API socket into it). */
  readonly held: HeldFds;
}

/** How the relay reaches the priv-domain. */
export interface PrivChannel {
  readonly connected: boolean;
  send(msg: SupervisorMessage): void;
  /** The VM ended: a ready priv-domain records it and exits; any other is killed. */
  finish(r: RunResult, timeoutMs: number): Promise<'recorded' | 'timeout' | 'not running'>;
}

export class Control {
  readonly page: ControlPage;
  readonly paths: VmPaths;
  readonly runId: string;
  private priv?: PrivChannel;
  private readonly recs: RecoveryRecord[] = [];
  private supRecsSeen = 0;
  private sentRecs = 0;
  private sentHangs = 0;
  private sentTakeovers = 0;
  private needFull = true;
  private lastSent = '';
  private lastSentAt = 0;
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private readonly startedAt = Date.now() / 1000;

  constructor(private readonly sup: ControlTarget, private readonly log: (line: string) => void = () => undefined) {
    this.page = ControlPage.map(sup.stateFd);
    // An adopting supervisor finds the page in use (console ring, counters, pause flag): as it is.
    if (!sup.adoption) this.page.init(sup.cfg.cpus);
    this.paths = vmPaths(sup.cfg.name);
    this.runId = sup.adoption?.runId ?? `${process.pid}-${Math.round(this.startedAt * 1000)}`;
  }

  /** The runtime directory and pid file, then the status relay to `priv` (started by the caller). */
  start(priv: PrivChannel): void {
    this.priv = priv;
    try {
      mkdirPrivate(path.dirname(this.paths.runDir));
      mkdirPrivate(this.paths.runDir);
      writeSupervisorPid(this.paths);
      // Bound here, so the socket file stays the VM owner's: the priv-domain serves it as an fd.
      try { fs.unlinkSync(this.paths.socket); } catch { /* none left behind */ }
      this.sup.held.apiFd = native.unixListen(this.paths.socket, 511);
    } catch (e) {
      this.log(`control plane: cannot create ${this.paths.runDir}: ${(e as Error).message}`);
    }
    try {
      this.prepareStateDir();
    } catch (e) {
      this.log(`control plane: cannot prepare ${this.paths.stateDir}: ${(e as Error).message}`);
    }
    this.timer = setInterval(() => this.tick(), STATUS_MS);
    this.timer.unref();
  }

  /** The environment the priv-domain needs from the relay. */
  get privEnv(): Record<string, string> {
    return { TSVMM_RUN_ID: this.runId, TSVMM_SUPERVISOR_PID: String(process.pid) };
  }

  /**
   * The VM's state directory, the priv-domain's working directory: owned by the uid the components
   * run as (contracts/confinement.ts), mode 0700. The roots above it become 0711 then: that uid
   * passes through them to its own VM's directory and can list none of them.
   */
  private prepareStateDir(): void {
    const dir = this.paths.stateDir;
    mkdirPrivate(dir);
    const { uid, gid } = this.sup.held.confinement;
    if (uid === undefined || gid === undefined) return;
    // tsvmm's own roots (<state root> and <state root>/vms): searchable, not listable.
    for (let up = path.dirname(dir), i = 0; i < 2; up = path.dirname(up), i++) {
      const mode = fs.statSync(up).mode & 0o7777;
      if ((mode & 0o111) !== 0o111) fs.chmodSync(up, mode | 0o111);
    }
    const blocked = unreachableBy(dir, uid, gid, true);
    if (blocked && blocked !== dir) throw new Error(`the priv-domain runs confined as uid ${uid} (--user picks another, --no-confine none) and cannot reach it: ${blocked} is not searchable by that uid`);
    fs.chownSync(dir, uid, gid);
    fs.chmodSync(dir, 0o700);
    for (const f of fs.readdirSync(dir)) fs.lchownSync(path.join(dir, f), uid, gid);
  }

  /** Recoveries of every component, the priv-domain's included. */
  get recoveries(): readonly RecoveryRecord[] { return this.recs; }

  /** A priv-domain (the first or a restarted one) is ready: it gets the full status now. */
  privReady(): void {
    this.needFull = true;
    this.tick();
  }

  private send(msg: SupervisorMessage): void {
    if (this.priv?.connected) this.priv.send(msg);
  }

  private component(name: string, pid: number | undefined): ComponentStatus {
    const mine = this.recs.filter((r) => r.component === name);
    const last = mine[mine.length - 1];
    let state = pid ? 'running' : 'stopped';
    if (pid && name === 'vmm' && this.page.pauseRequested) state = 'paused';
    return {
      name, pid: pid ?? 0, state, startedAt: (pid && processStartTime(pid)) || 0,
      restarts: mine.length, lastRecovery: last ?? null,
      privileges: this.privileges(pid),
    };
  }

  /** uid, gid, capabilities, seccomp mode of `pid` (from /proc; cached once it is filtered: that is final). */
  private readonly privCache = new Map<number, ProcessPrivileges>();
  private privileges(pid: number | undefined): ProcessPrivileges | null {
    if (!pid) return null;
    const cached = this.privCache.get(pid);
    if (cached) return cached;
    const p = processPrivileges(pid);
    if (!p) return null;
    if (p.seccomp === 'filter') {
      if (this.privCache.size > 64) this.privCache.clear();
      this.privCache.set(pid, p);
    }
    return p;
  }

  /** The status the priv-domain serves (`tsvmm ps`). */
  status(): ControlStatus {
    // Recoveries the supervisor measured, stamped when first seen here.
    const supRecs = this.sup.recoveries;
    for (; this.supRecsSeen < supRecs.length; this.supRecsSeen++) {
      const r = supRecs[this.supRecsSeen];
      this.recs.push({ component: r.component, cause: r.cause, seconds: r.ms / 1000, at: Date.now() / 1000, warm: r.warm === true });
    }
    const components: ComponentStatus[] = [
      // Restarts: every supervisor this VM had before this one (each adopted it from the last).
      { ...this.component('supervisor', process.pid), startedAt: processStartTime(process.pid) ?? this.startedAt, restarts: this.sup.adoption?.supervisors ?? 0, privileges: this.privileges(process.pid) },
      this.component('vmm', this.sup.pidOf('vmm')),
    ];
    // The keeper that would save the running vmm (none for a moment after it died, until re-armed).
    if (this.sup.pidOf('vmm')) components.push(this.component('keeper', this.sup.pidOf('keeper')));
    if (this.sup.hasDevices) components.push(this.component('driver-domain', this.sup.pidOf('driver-domain')));
    components.push(this.component('priv-domain', this.sup.pidOf('priv-domain')));
    return { components, recoveries: [], full: false, paused: this.page.pauseRequested, standbys: this.sup.standbys(), guestState: this.sup.guestState };
  }

  private tick(): void {
    if (this.stopped) return;
    const s = this.status();
    const full = this.needFull;
    s.recoveries = full ? this.recs.slice() : this.recs.slice(this.sentRecs);
    const hangs: HangKillRecord[] = this.sup.hangs.map((h) => ({ component: h.component, pid: h.pid, stillMs: h.stillMs, evidence: h.evidence, at: h.at }));
    s.hangKills = full ? hangs : hangs.slice(this.sentHangs);
    s.takeovers = full ? this.sup.takeovers.slice() : this.sup.takeovers.slice(this.sentTakeovers);
    s.full = full;
    const key = JSON.stringify({ c: s.components, n: this.recs.length, h: hangs.length, t: this.sup.takeovers.length, p: s.paused, s: s.standbys, g: s.guestState });
    const now = Date.now();
    if (!full && key === this.lastSent && now - this.lastSentAt < 1000) return;
    if (!this.priv?.connected) return;
    this.send({ status: s });
    this.needFull = false;
    this.sentRecs = this.recs.length;
    this.sentHangs = hangs.length;
    this.sentTakeovers = this.sup.takeovers.length;
    this.lastSent = key;
    this.lastSentAt = now;
  }

  private reply(r: ControlReply): void {
    this.send({ reply: r });
  }

  private pidOf(component: string): number | undefined {
    return (KILL_COMPONENTS as readonly string[]).includes(component) ? this.sup.pidOf(component as KillComponent) : undefined;
  }

  /** Runs one command from the priv-domain and answers it. */
  async execute(req: ControlRequest): Promise<void> {
    const { id } = req;
    try {
      switch (req.command) {
        case 'kill': {
          const component = (req.component ?? '') as KillComponent;
          if ((component as string) === 'supervisor') throw new Error('the supervisor is not killed through its own API: use `tsvmm stop`');
          if (!KILL_COMPONENTS.includes(component)) throw new Error(`unknown component "${component}" (${KILL_COMPONENTS.join(', ')})`);
          const asked = killSignal(component, req.signal || 'SIGKILL');
          if ('error' in asked) throw new Error(asked.error);
          const sig = asked.signal;
          const pid = this.pidOf(component);
          if (!pid) throw new Error(`${component} is not running`);
          this.reply({ id, ok: true, pid });
          // The priv-domain killing itself: let the reply leave first.
          if (component === 'priv-domain') setTimeout(() => { try { process.kill(pid, sig); } catch { /* gone */ } }, 30);
          else process.kill(pid, sig);
          return;
        }
        case 'pause':
        case 'resume': {
          const pause = req.command === 'pause';
          this.page.pauseRequested = pause;
          this.tick();
          const want = pause ? this.sup.cfg.cpus : 0;
          const t0 = Date.now();
          while (this.page.parkedVcpus !== want) {
            if (Date.now() - t0 > PAUSE_TIMEOUT_MS) {
              throw new Error(`${req.command} requested, but only ${this.page.parkedVcpus} of ${this.sup.cfg.cpus} vCPUs are parked after ${PAUSE_TIMEOUT_MS} ms`);
            }
            await new Promise((r) => setTimeout(r, 2));
          }
          this.reply({ id, ok: true });
          return;
        }
        case 'update': {
          const component = req.component || 'all';
          if (!['vmm', 'driver-domain', 'priv-domain', 'all'].includes(component)) throw new Error(`update: unknown component "${component}" (vmm, driver-domain, priv-domain, all)`);
          const r = component === 'priv-domain' ? {} : await this.sup.update(component);
          this.reply({ id, ok: true, pauseMs: r.vmmPauseMs ?? 0, handoverMs: r.ddMs ?? 0 });
          // The priv-domain serves this request: it goes last, once its answer has left; its
          // lifecycle starts the installed build in its place.
          const priv = this.pidOf('priv-domain');
          if ((component === 'priv-domain' || component === 'all') && priv) setTimeout(() => { try { process.kill(priv, 'SIGTERM'); } catch { /* gone */ } }, 50);
          return;
        }
        case 'snapshot': {
          const dir = req.dir ?? '';
          if (!path.isAbsolute(dir)) throw new Error(`snapshot: "${dir}" is not an absolute path`);
          const r = await this.sup.snapshot(dir, req.stop === true);
          this.reply({ id, ok: true, pauseMs: r.pauseMs, ramDataBytes: r.ramDataBytes });
          return;
        }
        case 'stop':
          // Recorded in run.pb before it is answered, so a supervisor that dies after the answer
          // leaves the stop to the one that adopts the VM. The VM cannot end within this call (a
          // hard stop waits 50 ms, a guest's power-off comes as an event): the answer gets out.
          this.sup.requestStop('tsvmm stop', { force: req.force === true, timeoutMs: req.timeoutMs || undefined });
          this.reply({ id, ok: true });
          return;
        case 'power-button':
          this.sup.pressPowerButton();
          this.reply({ id, ok: true });
          return;
        default:
          throw new Error(`unknown command "${req.command}"`);
      }
    } catch (e) {
      this.reply({ id, ok: false, error: (e as Error).message });
    }
  }

  /**
   * The VM is done: the priv-domain records it in its store and exits (killed if it has not within
   * FINISH_TIMEOUT_MS, or if it is not running: the record is then missing, and said so), then the
   * runtime directory goes.
   */
  async stop(r: RunResult): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    const recorded = await this.priv?.finish({ code: r.code, reason: r.reason }, FINISH_TIMEOUT_MS);
    if (recorded === 'timeout') this.log('control plane: the priv-domain did not record the VM\'s exit in time');
    else if (recorded !== 'recorded') this.log('control plane: the priv-domain was not running: the VM\'s exit is not in its store');
    try {
      const pid = Number(fs.readFileSync(this.paths.pidFile, 'utf8').split(' ')[0]);
      if (pid === process.pid) {
        fs.rmSync(this.paths.runDir, { recursive: true, force: true });
        fs.rmSync(this.paths.promTargets, { force: true });
      }
    } catch { /* not ours, or gone */ }
  }
}
