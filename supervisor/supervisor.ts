/**
 * The supervisor: the `tsvmm run` process itself. It creates and holds the
 * long-lived resources (guest RAM memfd, the shared state memfd, the snapshot
 * memfd, the serial output fd, the disks, TAPs and eventfds), starts one
 * lifecycle per component, and turns their reports into tsvmm's exit status:
 *
 *   vmm-lifecycle.ts            vmm, its keepers, its warm standby
 *   driver-domain-lifecycle.ts  driver-domain and its warm standby
 *   priv-domain-lifecycle.ts    priv-domain
 *   control.ts                  the control relay (status and commands to and from the priv-domain)
 *   hang-watch.ts               hang detection for all of them
 *   restart-policy.ts           when to restart, for all of them
 *   spawn.ts                    spawning with the held fds; IPC
 */
import * as fs from 'fs';
import * as path from 'path';
import { native } from '../native/kvm';
import { VmConfig } from '../proto';
import { DEVICE_PAGE_OFFSET, DEVICE_PAGE_SIZE, STATE_MEMFD_SIZE } from '../contracts/fds';
import { keeper, snapshotSize, SnapshotView } from '../contracts/snapshot';
import { Component, mapDevicePage, RegsCopy, StatePage } from '../contracts/state-page';
import { configMemfd } from '../contracts/component-config';
import { RunRecordWriter } from '../contracts/run-record';
import type { Adoption } from './adopt';
import { HeldDevice, openDevices } from './held-devices';
import { watchTaps } from './tap-reattach';
import { PLATFORM_PAGE_SIZE, PlatformPage } from '../contracts/platform-page';
import { ACPI_GED_POWER_BUTTON } from '../contracts/layout';
import { Control, ControlledComponent, ControlTarget } from './control';
import { DEFAULT_HANG_TIMEOUT_MS, Hang, HangWatch } from './hang-watch';

/** How often the supervisor checks the state page's static part (scrubStatePage). */
const SCRUB_MS = 50;
/** How often the supervisor checks the log file's size (LogFile.rotateIfNeeded). */
const LOG_ROTATE_CHECK_MS = 1000;
import { LifecycleHost, Recovery, recoveryFields, RunResult, Takeover } from './lifecycle';
import { DEFAULT_STOP_TIMEOUT_MS, TSVMM_EXIT } from '../contracts/exit-codes';
import { HeldFds } from './spawn';
import { VmmLifecycle, VmmRecovery } from './vmm-lifecycle';
import { DriverDomainLifecycle } from './driver-domain-lifecycle';
import { PrivDomainLifecycle } from './priv-domain-lifecycle';
import { threadState } from './hang-watch';
import { loadSnapshotPages, loadSnapshotRam, publishSnapshot, sealSnapshot } from '../contracts/snapshot-dir';
import type { GuestState, SnapshotManifest, StandbyStatus, StopRecord } from '../proto';
import { confinementFor, unreachableBy } from '../contracts/confinement';
import { componentEntry } from './component-entry';
import { Kvm } from '../kvm/system';
import { LogFile, Logger, logSettings, setProcessLogger } from '../contracts/log';
import { Guardian, supervisorHangMs } from './guardian';

export type { Recovery, RunResult } from './lifecycle';
export type { VmmRecovery } from './vmm-lifecycle';

/** The VM's end as run.pb keeps it (proto StopRecord): asked for or begun now, hard after `graceMs`. */
function stopRecord(reason: string, code: number, requested: boolean, graceMs = 0): StopRecord {
  const now = Date.now() / 1000;
  return { reason, code, requested, deadline: now + graceMs / 1000, since: now };
}

export interface SupervisorOptions {
  /** Where status, recoveries and warnings go (contracts/log.ts); default: stderr, with the settings in the environment. */
  logger?: Logger;
  /**
   * Hang detection (supervisor/hang-watch.ts): threshold in ms, default 250 (env
   * TSVMM_HANG_TIMEOUT_MS); 0 turns it off.
   */
  hangTimeoutMs?: number;
  /** Keep a warm standby vmm and driver-domain that take over the moment the primary dies (tsvmm run --standby). */
  standby?: boolean;
  /** tsvmm run --restore DIR: resume the guest a snapshot saved (contracts/snapshot-dir.ts), its manifest already read. */
  restore?: { dir: string; manifest: SnapshotManifest };
  /**
   * Adopt mode (supervisor/adopt.ts): the previous supervisor died; these are the fds it held,
   * taken out of the running components, which `start()` adopts instead of starting new ones.
   */
  adopted?: Adoption;
  /** `tsvmm run --user`: the uid[:gid] or name the components run as (contracts/confinement.ts). */
  user?: string;
  /** False for `tsvmm run --no-confine` (development): the components run unconfined. */
  confine?: boolean;
}

/**
 * How long the vmm of `tsvmm run --restore` waits for guest RAM to be read in (a keeper's save,
 * which a cold restore after a crash waits for, takes milliseconds; reading a large snapshot from
 * a slow disk may take minutes).
 */
const RESTORE_LOAD_WAIT_MS = 10 * 60_000;

/** The priv-domain starts once the guest runs, or after this long anyway (a boot, a restore). */
const PRIV_DEFER_MAX_MS = 3000;

/** What `snapshot()` did. */
export interface SnapshotResult { pauseMs: number; ramDataBytes: number; totalMs: number }

export class Supervisor implements LifecycleHost, ControlTarget {
  readonly held: HeldFds;
  readonly page: StatePage;
  /** The state page's static part as sealed: the page is scrubbed against it (scrubStatePage). */
  private readonly staticImage: Uint8Array[];
  private scrubTimer?: NodeJS.Timeout;
  /** supervisor/tap-reattach.ts: a vanished TAP made again is reattached. */
  private tapTimer?: NodeJS.Timeout;
  readonly hangWatch: HangWatch;
  readonly standby: boolean;
  /** Every recovery, with cause and time (ms). */
  readonly recoveries: Recovery[] = [];
  readonly control: Control;
  private readonly vmm: VmmLifecycle;
  private readonly driverDomain?: DriverDomainLifecycle;
  private readonly priv: PrivDomainLifecycle;
  private result?: RunResult;
  /** The platform page (contracts/platform-page.ts): the ACPI GED's events are set there. */
  private readonly platform: PlatformPage;
  /** A graceful stop in progress: the power button was pressed at t0; `timer` stops the VM hard. */
  private stopping?: { t0: number; timer: NodeJS.Timeout; reason: string };
  private resolveDone!: (r: RunResult) => void;
  readonly done: Promise<RunResult>;

  readonly logger: Logger;
  private logFile?: LogFile;
  private logTimer?: NodeJS.Timeout;

  constructor(readonly cfg: VmConfig, private readonly opts: SupervisorOptions = {}) {
    this.logger = setProcessLogger(opts.logger ?? new Logger({ component: 'supervisor', ...logSettings() }));
    const confinement = confinementFor(opts.user, opts.confine !== false);
    const { uid, gid } = confinement;
    if (uid !== undefined && gid !== undefined) {
      for (const script of [...componentEntry('vmm'), ...componentEntry('driver-domain')]) {
        const blocked = unreachableBy(script, uid, gid);
        if (blocked) throw new Error(`the components run confined as uid ${uid} (--user picks another, --no-confine none), which cannot read ${script} (stopped at ${blocked}): install tsvmm where that uid can read it, or choose another --user`);
      }
    }
    // What the vmm may not open itself once it runs as that uid: opened here, passed as fds. (A
    // restored or adopted VM never loads the kernel: it is in guest RAM.)
    const kvmFd = Kvm.open().fd;
    const kernelFd = opts.restore || opts.adopted ? -1 : fs.openSync(cfg.kernel, 'r');
    const initrdFd = cfg.initrd && !opts.restore && !opts.adopted ? fs.openSync(cfg.initrd, 'r') : -1;
    const jail = { kvmFd, kernelFd, initrdFd, apiFd: -1, logFd: -1, confinement };
    if (opts.adopted) {
      // The running components' fds and pages, as they are: nothing is formatted again.
      this.held = { ...opts.adopted.fds, ...jail };
      this.page = mapDevicePage(this.held.stateFd);
    } else {
      const ramFd = native.memfdCreate(`tsvmm-ram-${cfg.name}`, cfg.memBytes);
      const stateFd = native.memfdCreate(`tsvmm-state-${cfg.name}`, STATE_MEMFD_SIZE);
      const state = native.mmap(stateFd, STATE_MEMFD_SIZE, 0, true);
      const devBytes = (b: ArrayBuffer) => new Uint8Array(b, DEVICE_PAGE_OFFSET, DEVICE_PAGE_SIZE);
      new PlatformPage(state).init();
      // A restore opens the disks and TAPs as a boot does (on a scratch page: the saved one replaces it).
      const scratch = StatePage.format(devBytes(opts.restore ? new ArrayBuffer(STATE_MEMFD_SIZE) : state));
      const devices = openDevices(cfg, scratch);
      const serialFd = cfg.serialPath ? fs.openSync(cfg.serialPath, 'a') : 1;
      const snapFd = native.memfdCreate(`tsvmm-snap-${cfg.name}`, snapshotSize(cfg.cpus));
      keeper.snapshotFormat(snapFd, cfg.cpus);
      if (opts.restore) {
        // The small parts now (a corrupt snapshot is refused before anything starts); guest RAM
        // once the vmm is starting (start()), which waits for the snapshot memfd to say SAVED.
        this.restoreImage = loadSnapshotPages(opts.restore.dir, opts.restore.manifest, stateFd);
        SnapshotView.map(snapFd, cfg.cpus).markLoading();
      }
      this.page = opts.restore ? StatePage.attach(devBytes(state)) : scratch;
      this.held = { ramFd, stateFd, serialFd, snapFd, configFd: configMemfd(cfg), devices, ...jail };
    }
    this.platform = new PlatformPage(native.mmap(this.held.stateFd, PLATFORM_PAGE_SIZE, 0, true));
    // (An adopting supervisor takes the page's static part as it finds it.)
    this.staticImage = this.page.staticImage();
    this.standby = opts.standby === true;
    const hangMs = opts.hangTimeoutMs ?? Number(process.env.TSVMM_HANG_TIMEOUT_MS ?? DEFAULT_HANG_TIMEOUT_MS);
    this.hangWatch = new HangWatch(this.page, process.env.TSVMM_NO_RECOVERY === '1' ? 0 : hangMs, this.logger);
    this.control = new Control(this, (l) => this.logger.warn(l));
    this.vmm = new VmmLifecycle(this);
    if (this.held.devices.length) this.driverDomain = new DriverDomainLifecycle(this);
    this.priv = new PrivDomainLifecycle(this, this.control.privEnv, {
      ready: () => this.control.privReady(),
      request: (req) => void this.control.execute(req),
    });
    this.done = new Promise((resolve) => { this.resolveDone = resolve; });
    this.guardian = new Guardian(cfg.name, (l) => this.log(l), this.held.stateFd, supervisorHangMs(this.hangWatch.timeoutMs));
  }

  /** tsvmm run --restore: the saved VM state, checked, until guest RAM is in (startRestore). */
  private restoreImage?: Uint8Array;

  /**
   * tsvmm run --restore: the vmm starts first (its Node start and module load are most of a
   * restore) and waits for the snapshot memfd to say SAVED while guest RAM is read in and checked
   * here; then the saved state is published and the vmm claims it. A RAM file that fails its CRC
   * ends the vmm and is refused (SnapshotError, one line): nothing else has started yet.
   */
  private startRestore(r: NonNullable<SupervisorOptions['restore']>): void {
    this.vmm.start(true, RESTORE_LOAD_WAIT_MS);
    const t = performance.now();
    try {
      loadSnapshotRam(r.dir, r.manifest, this.held.ramFd);
      publishSnapshot(this.restoreImage!, this.held.snapFd, this.cfg.cpus);
    } catch (e) {
      this.result = { code: TSVMM_EXIT.failed, reason: (e as Error).message };
      this.vmm.stop();
      throw e;
    }
    this.restoreImage = undefined;
    if (process.env.TSVMM_RESTORE_DEBUG) this.logger.info(`guest RAM read in ${(performance.now() - t).toFixed(1)} ms (the vmm starting meanwhile), published at ${performance.now().toFixed(1)} ms since process start`);
  }

  start(): void {
    if (this.opts.restore && !this.opts.adopted) this.startRestore(this.opts.restore);
    this.control.start(this.priv);
    this.openLogFile();
    this.record = new RunRecordWriter(this.control.paths, {
      runId: this.control.runId, standby: this.standby, hangTimeoutMs: this.hangWatch.timeoutMs,
      supervisors: (this.opts.adopted?.supervisors ?? 0) + 1, startedAt: this.opts.adopted?.startedAt ?? Date.now() / 1000,
      user: this.opts.user ?? '', unconfined: this.opts.confine === false,
    });
    // A new VM (a boot or a restore) starts the priv-domain (the heaviest Node start of all, ~180
    // ms of CPU) and the guardian (~60 ms) once the guest runs, or after PRIV_DEFER_MAX_MS: on a
    // small host they would compete for the CPUs with the vmm's and driver-domain's starts, which
    // are the way to the guest's first instruction, and nothing the guest needs goes through them.
    // The API socket is bound meanwhile; the CLI retries until it is served. (A supervisor that
    // dies before the guest ran leaves no guardian: the VM, which has run nothing, ends.)
    if (!this.opts.adopted) {
      this.privDeferred = setTimeout(() => this.vmmRunning(), PRIV_DEFER_MAX_MS);
    } else {
      this.guardian.start();
      this.priv.start();
    }
    const a = this.opts.adopted;
    this.spawning = true;
    try {
      this.startComponents(a);
    } finally {
      this.spawning = false;
    }
    this.hangWatch.start();
    // The supervisor's beat, which its guardian watches (supervisor/guardian-main.ts): bumped once
    // the page is scrubbed, so it says the loop that protects the page and recovers the components runs.
    this.scrubTimer = setInterval(() => { this.scrubStatePage(); this.page.beat(Component.Supervisor); }, SCRUB_MS);
    const dd = this.driverDomain;
    const isFinished = () => this.finished;
    if (dd) this.tapTimer = watchTaps({ cfg: this.cfg, logger: this.logger, devices: this.held.devices, get finished() { return isFinished(); }, replaceDriverDomain: () => dd.update() });
    this.processesChanged();
  }

  /** start(): the vmm and the driver-domain, new or adopted. */
  private startComponents(a: Adoption | undefined): void {
    if (a) {
      this.driverDomain?.adopt(a.driverDomain, a.driverDomainServing);
      this.vmm.adopt(a.vmm, a.vmmRunning, a.keepers, a.cause);
      const ms = Number(process.hrtime.bigint() - a.t0) / 1e6;
      this.recovered({ component: 'supervisor', cause: a.cause, ms });
      this.logger.info(`recovered supervisor (cause: ${a.cause}) in ${ms.toFixed(1)} ms: adopted ${[
        a.vmm && `vmm ${a.vmm.pid}`, a.driverDomain && `driver-domain ${a.driverDomain.pid}`, ...a.keepers.map((k) => `keeper ${k}`),
      ].filter((s) => s).join(', ')} (supervisor ${a.supervisors + 1} of this VM, pid ${process.pid})`, recoveryFields({ component: 'supervisor', cause: a.cause, ms }));
    } else {
      // The vmm first: its start (modules, then the VM and its vCPUs) is the longer of the two the
      // guest waits for. (A restored guest's vmm is already starting: a cold restore from the
      // snapshot memfd.)
      if (!this.opts.restore) this.vmm.start(false);
      this.driverDomain?.start();
    }
  }

  /**
   * The state page's static part (geometry, device identities, features, config) is written once,
   * by the supervisor, before any component starts, and every restarted component trusts it: a
   * stray write or a flipped bit there (the fault-injection campaign's) made the next
   * driver-domain refuse the page and lose the VM. It is repaired from our private copy within
   * SCRUB_MS, sooner than a component restart reads it.
   */
  scrubStatePage(): void {
    const fixed = this.page.repairStatic(this.staticImage);
    if (fixed.length) this.logger.warn(`state page corrupted (${fixed.slice(0, 4).join('; ')}${fixed.length > 4 ? `; ${fixed.length - 4} more` : ''}): repaired from the supervisor's copy`);
    // The register blocks: the vmm writes them under a seqlock and a CRC; a block whose CRC fails
    // under the seqlock count of the copy kept here was overwritten by something else (a stray
    // write, a flipped bit) and would make the next driver-domain refuse the page: repaired from
    // the copy. Status bits virtio does not define are cleared for the same reason.
    for (let i = 0; i < Math.min(this.page.numDevices, this.page.geometry.maxDevices); i++) {
      const d = this.page.device(i);
      const unknown = d.clearUnknownStatus();
      if (unknown) this.logger.warn(`state page corrupted (device ${i} status: undefined bits 0x${unknown.toString(16)}): cleared`);
      const copy = this.regsCopies[i];
      const now = d.regsCopy();
      if (now) { this.regsCopies[i] = now; this.oddSeq[i] = undefined; continue; }
      const seq = d.regsSeq;
      if (seq & 1) {
        if (this.oddSeq[i] === seq && d.repairStuckSeq(seq)) this.logger.warn(`state page corrupted (device ${i} register seqlock stuck odd at ${seq} over registers that check out): made even`);
        this.oddSeq[i] = seq;
        continue;
      }
      if (!copy) continue;
      const regs = d.repairRegsFrom(copy);
      if (regs.length) this.logger.warn(`state page corrupted (device ${i} registers ${regs.slice(0, 4).join('; ')}${regs.length > 4 ? `; ${regs.length - 4} more` : ''}): repaired from the supervisor's copy`);
    }
  }

  /** Each device's register block as it last checked out (scrubStatePage). */
  private readonly regsCopies: (RegsCopy | undefined)[] = [];
  /** Each device's register seqlock count when last seen odd. */
  private readonly oddSeq: (number | undefined)[] = [];

  /**
   * <state dir>/tsvmm.log (contracts/log.ts): what this supervisor logged so far goes in, and every
   * component started from now on writes it through FD.LOG. Checked for rotation once a second.
   */
  private openLogFile(): void {
    try {
      this.logFile = new LogFile(this.control.paths.log);
    } catch (e) {
      this.logger.warn(`cannot open the log file ${this.control.paths.log} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): logs go to stderr only`);
      return;
    }
    this.held.logFd = this.logFile.fd;
    this.logger.attachFile(this.logFile.fd);
    this.logTimer = setInterval(() => this.logFile?.rotateIfNeeded(), LOG_ROTATE_CHECK_MS);
    this.logTimer.unref();
  }

  /** Adopt mode: what the dead supervisor left (supervisor/adopt.ts). */
  get adoption(): Adoption | undefined { return this.opts.adopted; }

  private record?: RunRecordWriter;
  /** start() is spawning: the run record is written once, when it is done (not between the spawns). */
  private spawning = false;
  /** The process that starts a new supervisor if this one dies (supervisor/guardian.ts). */
  private readonly guardian: Guardian;
  /** Its pid, while one runs. */
  get guardianPid(): number | undefined { return this.guardian.pid; }
  /** Rewrites run.pb when a pid changed: what a supervisor that adopts this VM reads. */
  processesChanged(): void {
    if (this.result || !this.record || this.spawning) return;
    this.record.update([['vmm', this.vmm.pid], ['driver-domain', this.driverDomain?.pid], ['keeper', this.vmm.keeperPid]]);
  }

  // ---- LifecycleHost ----

  log(line: string): void { this.logger.info(line); }
  vmmRunning(): void {
    if (!this.privDeferred) return;
    clearTimeout(this.privDeferred);
    this.privDeferred = undefined;
    if (this.result) return;
    this.guardian.start();
    this.priv.start();
  }
  private privDeferred?: NodeJS.Timeout;
  recovered(r: Recovery): void { this.recoveries.push(r); }
  /** Every standby takeover, in order. */
  readonly takeovers: Takeover[] = [];
  tookOver(t: Omit<Takeover, 'at'>): void {
    const rec = { ...t, at: Date.now() / 1000 };
    this.takeovers.push(rec);
    this.logger.info(`${t.component} standby (pid ${t.pid}) took over from pid ${t.fromPid} (${t.reason}) in ${t.ms.toFixed(2)} ms`,
      { event: 'takeover', target: t.component, targetPid: t.pid, fromPid: t.fromPid, reason: t.reason, ms: Math.round(t.ms * 1000) / 1000 });
  }
  get finished(): boolean { return this.result !== undefined; }

  finish(r: RunResult): void {
    if (this.result) return;
    // First in run.pb: a supervisor that adopts the VM if this one dies now finishes the end.
    this.record?.stopping(stopRecord(r.reason, r.code, r.requested === true));
    if (this.stopping) {
      clearTimeout(this.stopping.timer);
      // The guest powered off itself after the power button: the stop that was asked for.
      if (r.byGuest && r.code === TSVMM_EXIT.ok) {
        const ms = performance.now() - this.stopping.t0;
        r = { code: TSVMM_EXIT.stopped, requested: true, reason: `${this.stopping.reason}: the guest powered off ${ms.toFixed(0)} ms after the power button` };
      }
    }
    this.result = r;
    clearTimeout(this.privDeferred);
    this.hangWatch.stop();
    clearInterval(this.scrubTimer);
    clearInterval(this.tapTimer);
    clearInterval(this.logTimer);
    this.vmm.stop();
    this.driverDomain?.stop();
    // The priv-domain records the VM's end in its store before it goes (supervisor/control.ts).
    void this.control.stop(r).then(() => {
      this.guardian.stop();
      this.resolveDone(r);
    });
  }

  // ---- ControlTarget ----

  get stateFd(): number { return this.held.stateFd; }
  get hasDevices(): boolean { return this.held.devices.length > 0; }

  /** The standbys of a VM run with --standby; none without. */
  standbys(): StandbyStatus[] {
    if (!this.standby) return [];
    const out: StandbyStatus[] = [{ component: 'vmm', ...this.vmm.standbyStatus }];
    if (this.driverDomain) out.push({ component: 'driver-domain', ...this.driverDomain.standbyStatus });
    return out;
  }

  /** starting, running, paused or recovering (ControlStatus.guest_state). */
  get guestState(): GuestState {
    const s = this.vmm.guestState;
    return s === 'running' && this.control.page.pauseRequested ? 'paused' : s;
  }

  pidOf(component: ControlledComponent): number | undefined {
    switch (component) {
      case 'vmm': return this.vmm.pid;
      case 'keeper': return this.vmm.keeperPid;
      case 'driver-domain': return this.driverDomain?.pid;
      case 'priv-domain': return this.priv.pid;
    }
  }

  /** A requested stop (tsvmm stop, SIGTERM: exit 0; SIGINT: 130, as shells expect): not an error. */
  stop(reason: string, code: number = TSVMM_EXIT.stopped): void {
    this.finish({ code, reason, requested: true });
  }

  /**
   * tsvmm stop (POST /v1/vm/stop; `via` says so in the reasons): presses the ACPI power button
   * (pressPowerButton) and gives the guest `timeoutMs` to power off, which ends the VM as a
   * requested stop; after that, or at once with `force` (or a timeout of 0, or a paused VM, which
   * could not take the button), it stops the VM hard. A second request while one waits: --force
   * stops now; another graceful one changes nothing. Returns what it did, in words.
   */
  requestStop(via: string, o: { force?: boolean; timeoutMs?: number } = {}): string {
    if (this.result) return 'the VM is already stopping';
    const timeoutMs = o.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS;
    const hard = (reason: string) => {
      this.record?.stopping(stopRecord(reason, TSVMM_EXIT.stopped, true));
      setTimeout(() => this.stop(reason), 50);
      return reason;
    };
    if (o.force) return hard(`stopped through the API (${via} --force)`);
    if (timeoutMs <= 0) return hard(`stopped through the API (${via} --timeout 0)`);
    if (this.control.page.pauseRequested) return hard(`stopped through the API (${via}): the VM was paused and could not take the power button; stopped it hard`);
    if (this.stopping) return `the power button was pressed ${((performance.now() - this.stopping.t0) / 1000).toFixed(1)} s ago; waiting for the guest`;
    const s = `${+(timeoutMs / 1000).toFixed(3)} s`;
    const reason = `stopped through the API (${via})`;
    this.awaitPowerOff(stopRecord(reason, TSVMM_EXIT.stopped, true, timeoutMs), `: the guest did not power off within ${s} of the power button; stopped it hard`);
    this.pressPowerButton();
    this.log(`stop requested: pressed the power button; the guest has ${s} to power off before the VM is stopped hard`);
    return `pressed the power button; the VM stops hard in ${s} unless the guest powers off first`;
  }

  /** The power button is pressed: the guest has until `stop.deadline` to power off (recorded in run.pb first). */
  private awaitPowerOff(stop: StopRecord, hardly: string): void {
    this.record?.stopping(stop);
    const leftMs = Math.max(0, stop.deadline * 1000 - Date.now());
    this.stopping = {
      t0: performance.now() - (Date.now() - stop.since * 1000), reason: stop.reason,
      timer: setTimeout(() => this.stop(`${stop.reason}${hardly}`, stop.code), leftMs),
    };
  }

  /**
   * An adopted VM whose previous supervisor had begun its end (RunRecord.stop: a stop asked for,
   * the guest's power-off, a failure): this one finishes it rather than run the VM on; a guest
   * given time for the power button keeps what was left of it.
   */
  finishStop(stop: StopRecord): void {
    const by = 'finished by the supervisor that adopted the VM';
    this.log(`the previous supervisor had begun to stop the VM (${stop.reason}): ${by.replace('finished', 'finishing it')}`);
    if (stop.deadline * 1000 <= Date.now()) this.finish({ code: stop.code, reason: `${stop.reason} (${by})`, requested: stop.requested });
    else {
      this.awaitPowerOff(stop, `: the guest did not power off in time after the power button; stopped it hard (${by})`);
      this.pressPowerButton(); // again: the one that died may have recorded the stop and died before pressing it
    }
  }

  /**
   * The ACPI power button (POST /v1/vm/power-button, and tsvmm stop): sets its event in the
   * platform page and has the vmm raise the GED's interrupt (vmm/ged.ts). A vmm that replaces a
   * dead one raises it again while the guest has not taken it.
   */
  pressPowerButton(): void {
    if (this.result) throw new Error('the VM is stopping');
    this.platform.gedRaise(ACPI_GED_POWER_BUTTON);
  }

  /**
   * tsvmm update COMPONENT: replaces the running vmm and/or driver-domain with the build installed
   * now, through their standby path, without a guest reboot (vmm-lifecycle.ts / driver-domain-lifecycle.ts
   * update()). The priv-domain is restarted by the caller once it has answered (it serves the request).
   * A component whose new build cannot take over refuses in one line and the VM runs on as it was.
   */
  async update(component: string): Promise<{ vmmPauseMs?: number; ddMs?: number }> {
    if (this.result) throw new Error('the VM is stopping');
    if (this.snapshotting) throw new Error('a snapshot is in progress; try again');
    const r: { vmmPauseMs?: number; ddMs?: number } = {};
    if (component === 'vmm' || component === 'all') r.vmmPauseMs = (await this.vmm.update()).pauseMs;
    if ((component === 'driver-domain' || component === 'all') && this.driverDomain) r.ddMs = (await this.driverDomain.update()).ms;
    return r;
  }

  private snapshotting = false;

  /**
   * tsvmm snapshot (docs/snapshots.md): stops the driver-domain (SIGSTOP: what it had in flight
   * stays recorded in the queue progress, and a restored driver-domain resubmits it, as after a
   * crash), has the vmm park the vCPUs and write the VM's state, the pages and guest RAM into `dir`,
   * lets the driver-domain go on, and seals the snapshot with its manifest. With `stop` the VM ends
   * afterwards. One at a time; `dir` must not exist yet (or be empty). The hang watch waits meanwhile.
   */
  async snapshot(dir: string, stop: boolean): Promise<SnapshotResult> {
    const t0 = performance.now();
    if (this.result) throw new Error('the VM is stopping');
    if (this.snapshotting) throw new Error('a snapshot is already in progress');
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    } catch (e) { throw new Error(`cannot create ${dir}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`); }
    if (fs.readdirSync(dir).length) throw new Error(`${dir} is not empty: a snapshot goes into a new directory`);
    // The vmm writes it, as the uid it runs as (contracts/confinement.ts): it must reach the
    // directory, which is its own until the snapshot is sealed.
    const { uid, gid } = this.held.confinement;
    if (uid !== undefined && gid !== undefined) {
      const blocked = unreachableBy(path.dirname(path.resolve(dir)), uid, gid, true);
      if (blocked) throw new Error(`the vmm runs confined as uid ${uid} (--user picks another, --no-confine none) and cannot write to ${dir}: ${blocked} is not searchable by that uid (make it so, e.g. chmod o+x, or choose another directory)`);
      fs.chownSync(dir, uid, gid);
    }
    const dd = this.driverDomain?.pid;
    let stopped = false;
    this.snapshotting = true;
    this.hangWatch.suspended = true;
    try {
      if (dd) {
        process.kill(dd, 'SIGSTOP');
        stopped = true;
        // Stopped for real (state T) before the vCPUs park: no write of its can land after the copy starts.
        for (let i = 0; i < 2000 && threadState(dd) !== 'T'; i++) await new Promise((r) => setImmediate(r));
      }
      // Once captured (the guest runs again), so does the driver-domain; a VM that stops keeps it stopped.
      const resume = () => { if (stopped && !stop) { process.kill(dd!, 'SIGCONT'); stopped = false; } };
      const r = await this.vmm.snapshot({ dir, stop }, resume);
      if (!r.ok) throw new Error(`snapshot failed: ${r.error}`);
      resume();
      stopped = false;
      sealSnapshot(dir, this.cfg, r.ramExtents ?? [], r.pauseMs);
      // Sealed: the owner's again, not the confined uid's (which could otherwise rewrite it).
      if (uid !== undefined) for (const f of ['.', ...fs.readdirSync(dir)]) fs.chownSync(path.join(dir, f), process.getuid?.() ?? 0, process.getgid?.() ?? 0);
      const res = { pauseMs: r.pauseMs, ramDataBytes: r.ramDataBytes, totalMs: performance.now() - t0 };
      this.log(`snapshot of the VM in ${dir}: guest paused ${r.pauseMs.toFixed(1)} ms, ${(r.ramDataBytes / 2 ** 20).toFixed(1)} MiB of RAM, ${res.totalMs.toFixed(0)} ms in all${stop ? '; stopping the VM' : ''}`);
      if (stop) setTimeout(() => this.finish({ code: 0, reason: `stopped after a snapshot to ${dir}` }), 20);
      return res;
    } catch (e) {
      fs.rmSync(dir, { recursive: true, force: true }); // it was new or empty: no half snapshot stays
      throw e;
    } finally {
      if (stopped) { try { process.kill(dd!, 'SIGCONT'); } catch { /* gone */ } }
      this.snapshotting = false;
      this.hangWatch.suspended = false;
    }
  }

  // ---- for the CLI and tests ----

  get devices(): HeldDevice[] { return this.held.devices; }
  /** pid of the running vmm (for users and tests that kill it). */
  get vmmPid(): number | undefined { return this.vmm.pid; }
  /** pid of the running driver-domain. */
  get driverDomainPid(): number | undefined { return this.driverDomain?.pid; }
  /** pids of the keepers still alive (tests check none is left behind). */
  get keeperPids(): number[] { return this.vmm.keeperPids; }
  /** vmm recoveries in detail (they are in `recoveries` too). */
  get vmmRecoveries(): readonly VmmRecovery[] { return this.vmm.recoveries; }
  /** Hangs detected, with their evidence. */
  get hangs(): readonly Hang[] { return this.hangWatch.hangs; }
}
