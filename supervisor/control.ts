/**
 * The supervisor's side of the control plane. It
 *   - formats the control page (contracts/control-page.ts) before any component starts;
 *   - spawns the priv-domain (priv-domain/main.ts) and restarts it whenever it dies: the guest
 *     and its I/O never depend on it, so there is no give-up limit, only a back-off when
 *     restarted ones keep dying before they are ready;
 *   - relays every component's pid, state, start time, restarts and recoveries to it
 *     (ControlStatus, on change and once a second, all of it after each priv-domain start);
 *   - executes its commands (ControlRequest): kill COMPONENT [SIGNAL], pause, resume, stop.
 * The supervisor calls `start()` first thing in its own start() and `stop()` when it finishes.
 */
import * as fs from 'fs';
import * as path from 'path';
import { ChildProcess, spawn } from 'child_process';
import { componentEnv } from './component-env';
import { KILL_COMPONENTS, KillComponent, killSignal } from '../contracts/signals';
import type { RunResult, Supervisor } from './supervisor';
import {
  ComponentMessage, ComponentMessageCodec, ComponentStatus, ControlReply, ControlRequest, ControlStatus,
  RecoveryRecord, SupervisorMessage, SupervisorMessageCodec, VmConfigCodec,
} from '../proto';
import { ControlPage } from '../contracts/control-page';
import { mkdirPrivate, vmPaths, VmPaths } from '../contracts/paths';

const DIST = path.resolve(__dirname, '..');
const STATUS_MS = 100;
const PAUSE_TIMEOUT_MS = 3000;
/** How long the priv-domain gets to record the VM's end before it is killed. */
const FINISH_TIMEOUT_MS = 2000;

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

export class Control {
  readonly page: ControlPage;
  readonly paths: VmPaths;
  readonly runId: string;
  private priv?: ChildProcess;
  private privReadyOnce = false;
  private privPending?: { cause: string; t0: bigint };
  private privFailuresInARow = 0;
  private privRestarts = 0;
  private readonly recs: RecoveryRecord[] = [];
  private supRecsSeen = 0;
  private sentRecs = 0;
  private needFull = true;
  private lastSent = '';
  private lastSentAt = 0;
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private readonly startedAt = Date.now() / 1000;

  constructor(private readonly sup: Supervisor, private readonly log: (line: string) => void = () => undefined) {
    this.page = ControlPage.map(sup.stateFd);
    this.page.init(sup.cfg.cpus);
    this.paths = vmPaths(sup.cfg.name);
    this.runId = `${process.pid}-${Math.round(this.startedAt * 1000)}`;
  }

  start(): void {
    try {
      mkdirPrivate(path.dirname(this.paths.runDir));
      mkdirPrivate(this.paths.runDir);
      fs.writeFileSync(this.paths.pidFile, `${process.pid}\n`, { mode: 0o600 });
    } catch (e) {
      this.log(`control plane: cannot create ${this.paths.runDir}: ${(e as Error).message}`);
    }
    this.spawnPriv();
    this.timer = setInterval(() => this.tick(), STATUS_MS);
    this.timer.unref();
  }

  get privDomainPid(): number | undefined { return this.priv?.pid; }

  /** Recoveries of every component, the priv-domain's included. */
  get recoveries(): readonly RecoveryRecord[] { return this.recs; }

  private spawnPriv(cause?: string): void {
    if (this.stopped) return;
    const stdio: ('ignore' | 'inherit' | 'ipc' | number)[] = ['ignore', 'ignore', 'inherit', 'ipc', 'ignore', this.sup.stateFd];
    const child = spawn(process.execPath, [path.join(DIST, 'priv-domain', 'main.js')], {
      stdio,
      env: componentEnv({
        TSVMM_CONFIG: Buffer.from(VmConfigCodec.encode(this.sup.cfg)).toString('base64'),
        TSVMM_RUN_ID: this.runId,
        TSVMM_SUPERVISOR_PID: String(process.pid),
      }),
    });
    this.priv = child;
    this.needFull = true;
    if (cause) this.privPending = { cause, t0: process.hrtime.bigint() };
    child.on('message', (m: { pb?: string }) => {
      if (child !== this.priv || typeof m?.pb !== 'string') return;
      let msg: ComponentMessage;
      try { msg = ComponentMessageCodec.decode(Buffer.from(m.pb, 'base64')); } catch { return; }
      if ('ready' in msg && msg.ready) this.onPrivReady(msg.ready.pid);
      else if ('controlRequest' in msg && msg.controlRequest) void this.execute(msg.controlRequest);
      else if ('fatal' in msg && msg.fatal) this.log(`priv-domain: ${msg.fatal.message}`);
    });
    child.on('error', () => undefined);
    child.on('exit', (code, signal) => {
      if (child !== this.priv || this.stopped) return;
      const why = signal ? `signal ${signal}` : `exit code ${code}`;
      // Dying before ready again and again (a broken store, say): restart, but slower.
      const delay = this.privFailuresInARow >= 3 ? Math.min(5000, 250 * 2 ** (this.privFailuresInARow - 3)) : 0;
      this.privFailuresInARow++;
      if (delay) setTimeout(() => this.spawnPriv(why), delay).unref();
      else this.spawnPriv(why);
    });
  }

  private onPrivReady(pid: number): void {
    this.privFailuresInARow = 0;
    if (!this.privReadyOnce) {
      this.privReadyOnce = true;
      this.log(`priv-domain ready (pid ${pid})`);
    }
    const p = this.privPending;
    this.privPending = undefined;
    if (p) {
      const ms = Number(process.hrtime.bigint() - p.t0) / 1e6;
      this.privRestarts++;
      this.recs.push({ component: 'priv-domain', cause: p.cause, seconds: ms / 1000, at: Date.now() / 1000 });
      this.log(`recovered priv-domain (cause: ${p.cause}) in ${ms.toFixed(1)} ms`);
    }
    this.needFull = true;
    this.tick();
  }

  private send(msg: SupervisorMessage): void {
    const child = this.priv;
    if (!child?.connected) return;
    try {
      child.send({ pb: Buffer.from(SupervisorMessageCodec.encode(msg)).toString('base64') }, () => undefined);
    } catch { /* it died: it gets everything again when it is back */ }
  }

  private component(name: string, pid: number | undefined): ComponentStatus {
    const mine = this.recs.filter((r) => r.component === name);
    const last = mine[mine.length - 1];
    let state = pid ? 'running' : 'stopped';
    if (pid && name === 'vmm' && this.page.pauseRequested) state = 'paused';
    return {
      name, pid: pid ?? 0, state, startedAt: (pid && processStartTime(pid)) || 0,
      restarts: name === 'priv-domain' ? this.privRestarts : mine.length, lastRecovery: last ?? null,
    };
  }

  /** The status the priv-domain serves (`tsvmm ps`). */
  status(): ControlStatus {
    // Recoveries the supervisor measured (vmm, driver-domain), stamped when first seen here.
    const supRecs = this.sup.recoveries;
    for (; this.supRecsSeen < supRecs.length; this.supRecsSeen++) {
      const r = supRecs[this.supRecsSeen];
      this.recs.push({ component: r.component, cause: r.cause, seconds: r.ms / 1000, at: Date.now() / 1000 });
    }
    const components: ComponentStatus[] = [
      { name: 'supervisor', pid: process.pid, state: 'running', startedAt: processStartTime(process.pid) ?? this.startedAt, restarts: 0, lastRecovery: null },
      this.component('vmm', this.sup.vmmPid),
    ];
    // The keeper that would save the running vmm (none for a moment after it died, until re-armed).
    if (this.sup.vmmPid) components.push(this.component('keeper', this.sup.keeperPid));
    if (this.sup.devices.length) components.push(this.component('driver-domain', this.sup.driverDomainPid));
    components.push(this.component('priv-domain', this.priv?.exitCode === null && this.priv.signalCode === null ? this.priv.pid : undefined));
    return { components, recoveries: [], full: false, paused: this.page.pauseRequested };
  }

  private tick(): void {
    if (this.stopped) return;
    const s = this.status();
    const full = this.needFull;
    s.recoveries = full ? this.recs.slice() : this.recs.slice(this.sentRecs);
    s.full = full;
    const key = JSON.stringify({ c: s.components, n: this.recs.length, p: s.paused });
    const now = Date.now();
    if (!full && key === this.lastSent && now - this.lastSentAt < 1000) return;
    if (!this.priv?.connected) return;
    this.send({ status: s });
    this.needFull = false;
    this.sentRecs = this.recs.length;
    this.lastSent = key;
    this.lastSentAt = now;
  }

  private reply(r: ControlReply): void {
    this.send({ reply: r });
  }

  private pidOf(component: string): number | undefined {
    switch (component) {
      case 'vmm': return this.sup.vmmPid;
      case 'driver-domain': return this.sup.driverDomainPid;
      case 'priv-domain': return this.priv?.pid;
      case 'keeper': return this.sup.keeperPid;
      default: return undefined;
    }
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
        case 'stop':
          this.reply({ id, ok: true });
          setTimeout(() => this.sup.stop('stopped through the API (tsvmm stop)'), 50);
          return;
        default:
          throw new Error(`unknown command "${req.command}"`);
      }
    } catch (e) {
      this.reply({ id, ok: false, error: (e as Error).message });
    }
  }

  /**
   * The VM is done: the priv-domain records it in its store and exits (SIGKILLed if it has not
   * within FINISH_TIMEOUT_MS, or if it is not running: the record is then missing, and said so),
   * then the runtime directory goes.
   */
  async stop(r: RunResult): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    const priv = this.priv;
    if (priv && priv.exitCode === null && priv.signalCode === null && priv.connected && this.privReadyOnce && !this.privPending) {
      const exited = new Promise<void>((resolve) => priv.once('exit', () => resolve()));
      this.send({ finished: { code: r.code, reason: r.reason } });
      const timer = setTimeout(() => { this.log('control plane: the priv-domain did not record the VM\'s exit in time'); priv.kill('SIGKILL'); }, FINISH_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    } else {
      try { priv?.kill('SIGKILL'); } catch { /* gone */ }
      this.log('control plane: the priv-domain was not running: the VM\'s exit is not in its store');
    }
    try {
      const pid = Number(fs.readFileSync(this.paths.pidFile, 'utf8'));
      if (pid === process.pid) fs.rmSync(this.paths.runDir, { recursive: true, force: true });
    } catch { /* not ours, or gone */ }
  }
}
