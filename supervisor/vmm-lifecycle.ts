/**
 * The vmm's lifecycle, its keepers and its warm standby.
 *
 * A vmm boots the guest, or (cold) restores the snapshot its predecessor's
 * keeper saved, or waits as a warm standby to do that the moment the primary
 * dies. A vmm that exits without having reported the guest's exit is recovered
 * that way while a snapshot can be saved or exists; one that dies while it
 * boots, before its keeper was armed (the guest has not run), boots again.
 * Restarts follow the vmm's RestartPolicy: back-off, never giving up while
 * there is a snapshot to resume.
 *
 * A keeper is the supervisor's child (CLONE_PARENT): reaped here by pidfd, so
 * its death is seen at once; the hang watch kills one that is stopped. A keeper
 * that dies while its vmm runs leaves the vmm unprotected: the vmm is asked to
 * clone a new one (ArmKeeper / KeeperArmed).
 */
import * as os from 'os';
import { EventEmitter } from 'events';
import { isOurChild, waitNotOurChild } from './not-our-child';
import { ChildProcess } from 'child_process';
import type { SnapshotDone, SnapshotRequest } from '../proto';
import { componentEntry } from './component-entry';
import { Component } from '../contracts/state-page';
import { EXIT_NOT_NEEDED, TSVMM_EXIT } from '../contracts/exit-codes';
import { keeper, KEEPER, SnapshotView, SnapState } from '../contracts/snapshot';
import { LifecycleHost, recoveryFields } from './lifecycle';
import { RESTART_LIMITS, RestartPolicy } from './restart-policy';
import { componentStdio, hasExited, killHung, ReadyMsg, replaceStandby, sendTo, spawnProcess, whenExited } from './spawn';
import { STANDBY_RESPAWN_MS } from './driver-domain-lifecycle';

/** A warm standby that has not taken over this long after its primary died is replaced by a cold start. */
const STANDBY_TAKEOVER_TIMEOUT_MS = 3000;
/** A keeper's beat (keeper.h) may be still this long before the hang watch judges it: a few beats. */
const KEEPER_BEAT_TIMEOUT_MS = 5 * KEEPER.BEAT_MS;
const SIGNAL_NAME: Record<number, string> = Object.fromEntries(Object.entries(os.constants.signals).map(([k, v]) => [v, k]));

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

type VmmMode = 'boot' | 'restore' | 'standby';

export class VmmLifecycle {
  /** vmm recoveries in detail (reported to the host as well). */
  readonly recoveries: VmmRecovery[] = [];
  private primary?: ChildProcess;
  private spare?: ChildProcess;
  private pending?: { cause: string; t0: bigint; dead: ChildProcess; fallback?: NodeJS.Timeout };
  private readonly policy = new RestartPolicy('vmm', RESTART_LIMITS.vmm);
  private readonly bootPolicy = new RestartPolicy('vmm boot', RESTART_LIMITS.vmmBoot);
  private readonly sparePolicy = new RestartPolicy('vmm standby', RESTART_LIMITS.standby);
  private spareGaveUp = false;
  /** vmms that reported the guest running (booted or resumed). */
  private readonly running = new WeakSet<ChildProcess>();
  private readonly snap: SnapshotView;
  /** TSVMM_NO_RECOVERY=1 (bench/recovery's overhead row only): no keeper, nothing to recover from. */
  private readonly noRecovery = process.env.TSVMM_NO_RECOVERY === '1';

  // ---- keepers ----
  /** Live keepers (our children through CLONE_PARENT), reaped by waitExit; pids ever tracked. */
  private readonly keepers = new Set<number>();
  private readonly keepersSeen = new Set<number>();
  /** Each vmm's current keeper (a standby's is dormant until it takes over). */
  private readonly keeperOf = new WeakMap<ChildProcess, number>();
  /** A keeper that died under a running vmm, until the vmm reports its new one. */
  private keeperPending?: { cause: string; t0: bigint; dead: number; vmm: ChildProcess };
  private readonly keeperPolicy = new RestartPolicy('keeper', RESTART_LIMITS.keeper);
  /** Keepers the hang watch found stopped and killed. */
  private readonly keepersHung = new Set<number>();

  constructor(private readonly host: LifecycleHost) {
    this.snap = SnapshotView.map(host.held.snapFd, host.cfg.cpus, true);
  }

  /** pid of the running vmm. */
  get pid(): number | undefined { return this.primary?.pid; }

  /** Standbys that reported themselves built and waiting. */
  private readonly spareReady = new WeakSet<ChildProcess>();
  /** A vmm has run the guest (booted or resumed it). */
  private guestRan = false;

  /** The warm standby (tsvmm run --standby): its pid, and whether it would take over now. */
  get standbyStatus(): { pid: number; ready: boolean } {
    const s = this.spare;
    return { pid: s?.pid ?? 0, ready: s !== undefined && this.spareReady.has(s) && !hasExited(s) && !this.pending };
  }

  /** The guest as the vmm lifecycle sees it (pause is the control page's: supervisor/control.ts). */
  get guestState(): 'starting' | 'running' | 'recovering' {
    if (this.pending) return 'recovering';
    const p = this.primary;
    if (p && this.running.has(p) && !hasExited(p)) return 'running';
    return this.guestRan ? 'recovering' : 'starting';
  }
  /** pids of the keepers still alive (tests check none is left behind). */
  get keeperPids(): number[] { return [...this.keepers]; }
  /** pid of the running vmm's keeper (the one that saves it if it dies), if it has one. */
  get keeperPid(): number | undefined {
    const pid = this.primary && this.keeperOf.get(this.primary);
    return pid && this.keepers.has(pid) ? pid : undefined;
  }

  /** `restore`: the snapshot memfd holds a SAVED snapshot (tsvmm run --restore): resume it, cold. */
  /** `loadWaitMs`: how long a restoring vmm waits for the snapshot memfd to say SAVED (tsvmm run --restore). */
  start(restore = false, loadWaitMs?: number): void {
    this.loadWaitMs = loadWaitMs;
    this.spawn(restore ? 'restore' : 'boot');
    this.loadWaitMs = undefined;
  }
  private loadWaitMs?: number;

  /**
   * tsvmm snapshot: asks the running vmm to park its vCPUs and write the VM into `dir`
   * (vmm/main.ts snapshotNow); `captured` is called once the state is in the vmm's memory and the
   * guest runs again; resolves once the files are written, or with a failure if it exits first.
   */
  snapshot(req: SnapshotRequest, captured: () => void): Promise<SnapshotDone> {
    const vmm = this.primary;
    if (!vmm || !this.running.has(vmm) || this.pending || hasExited(vmm)) {
      return Promise.reject(new Error('the vmm is not running the guest right now (recovering?); try again'));
    }
    const exited = whenExited(vmm).then((cause): SnapshotDone => ({ ok: false, error: `the vmm exited during the snapshot (${cause})`, pauseMs: 0, ramDataBytes: 0 }));
    // First answer `written: false`: captured, the guest runs again; then `written: true`.
    const done = new Promise<SnapshotDone>((resolve) => { this.snapshotDone = (d) => { if (d.ok && d.written === false) captured(); else resolve(d); }; });
    sendTo(vmm, { snapshot: req });
    return Promise.race([done, exited]).finally(() => { this.snapshotDone = undefined; });
  }
  private snapshotDone?: (d: SnapshotDone) => void;

  /**
   * tsvmm update vmm: a standby started from the build installed now takes over from the running
   * vmm, which exits cleanly (status 0) once that standby is ready: its keeper saves the VM and the
   * standby resumes it (the warm path of a crash, without the crash). A standby that cannot start
   * (a build whose shared layouts this VM's do not match says so in one line) leaves the VM as it
   * was. Resolves with the guest's pause (the keeper seeing the old vmm exit -> the vCPUs released).
   */
  async update(): Promise<{ pauseMs: number; saveMs: number }> {
    const h = this.host;
    const old = this.primary;
    if (!old || !this.running.has(old) || this.pending || hasExited(old) || this.noRecovery) {
      throw new Error('the vmm is not running the guest right now (recovering?); try again');
    }
    if (this.handingOver) throw new Error('an update of the vmm is already in progress');
    const stale = this.spare;
    this.spare = undefined;
    const why = await replaceStandby(stale, (settled) => { this.spareWait = settled; this.spawn('standby'); });
    this.spareWait = undefined;
    if (why !== undefined) throw new Error(`update refused, the VM runs on unchanged: the new vmm cannot take over: ${why}`);
    if (this.primary !== old || hasExited(old) || this.pending) throw new Error('the vmm changed during the update (a recovery); try again');
    this.handingOver = old;
    const done = new Promise<{ pauseMs: number; saveMs: number }>((resolve) => { this.updated = resolve; });
    sendTo(old, { handover: {} });
    const r = await done;
    this.updated = undefined;
    h.log(`vmm updated (guest paused ${r.pauseMs.toFixed(2)} ms)`);
    return r;
  }
  private spareWait?: (failure: string | undefined) => void;
  private handingOver?: ChildProcess;
  private updated?: (r: { pauseMs: number; saveMs: number }) => void;

  /** The VM is over: keepers first (one that saw its vmm die would save a snapshot nobody needs). */
  stop(): void {
    for (const pid of this.keepers) { try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ } }
    this.spare?.kill('SIGKILL');
    this.primary?.kill('SIGKILL');
  }

  /**
   * Adopt mode (supervisor/adopt.ts): the dead supervisor's vmm and keeper are ours now. A vmm
   * that runs the guest is watched at once; one still restoring reports ready over
   * supervisor.sock; none left is recovered from its keeper's save, as any vmm death.
   */
  adopt(vmm: ChildProcess | undefined, running: boolean, keepers: number[], cause: string): void {
    const h = this.host;
    if (vmm) {
      this.spawn('restore', vmm);
      for (const k of keepers) this.trackKeeper(k, vmm);
      if (running) {
        this.running.add(vmm);
        this.guestRan = true;
        h.hangWatch.watchHeartbeat(vmm, 'vmm', vmm.pid, Component.Vmm, () => killHung(vmm));
        if (h.standby) setTimeout(() => { if (!h.finished && !this.spare) this.spawn('standby'); }, STANDBY_RESPAWN_MS);
      }
      return;
    }
    const gone = new EventEmitter() as unknown as ChildProcess;
    this.primary = gone;
    this.onExit(gone, `${cause}; it died while the VM had no supervisor`);
  }

  private spawn(mode: VmmMode, adopted?: ChildProcess): ChildProcess {
    const h = this.host;
    const env: Record<string, string> = mode === 'restore' ? { TSVMM_RESTORE: '1' } : mode === 'standby' ? { TSVMM_STANDBY: '1' } : {};
    if (mode === 'restore' && this.loadWaitMs) env.TSVMM_RESTORE_WAIT_MS = String(this.loadWaitMs);
    env.TSVMM_VCPUS = String(h.cfg.cpus); // the vmm starts that many vCPU threads first (vmm/early-vcpu-threads.ts)
    const child = spawnProcess({
      component: 'vmm',
      adopted,
      script: componentEntry('vmm'),
      stdio: componentStdio(h.held, 'vmm'),
      confinement: h.held.confinement,
      name: 'vmm', logger: h.logger,
      env,
      onMessage: (m) => {
        if ('ready' in m && m.ready) {
          h.log(`vmm${m.ready.standby ? ' standby' : ''} ready (pid ${m.ready.pid})`);
          this.onReady(child, m.ready);
        } else if ('keeperArmed' in m && m.keeperArmed) this.onKeeperArmed(child, m.keeperArmed);
        else if ('snapshotDone' in m && m.snapshotDone) { if (child === this.primary) this.snapshotDone?.(m.snapshotDone); }
        else if ('guestExit' in m && m.guestExit) h.finish({ code: m.guestExit.code === 0 ? TSVMM_EXIT.ok : TSVMM_EXIT.guestFailed, reason: m.guestExit.reason, byGuest: true });
        else if ('fatal' in m && m.fatal) {
          if (child === this.spare && !this.pending) {
            // A standby that failed to build: the primary is fine; drop it (its exit schedules a new one).
            h.logger.warn(`vmm standby failed: ${m.fatal.message}`);
            this.spareWait?.(m.fatal.message);
            child.kill('SIGKILL');
            return;
          }
          h.finish({ code: TSVMM_EXIT.failed, reason: m.fatal.message });
        }
      },
      onExit: (cause) => {
        h.hangWatch.unwatch(child);
        if (h.finished) return;
        if (child === this.spare) { this.onSpareExit(cause); return; }
        if (child !== this.primary) return;
        if (child.exitCode === EXIT_NOT_NEEDED) { if (this.pending && !this.spare) this.staleClaim(); return; }
        this.onExit(child, cause);
      },
    });
    if (mode === 'standby') this.spare = child;
    else this.primary = child;
    h.processesChanged();
    return child;
  }

  private onExit(dead: ChildProcess, cause: string): void {
    const h = this.host;
    const state = this.snap.state;
    const keeperPid = this.snap.keeperPid;
    if (state !== SnapState.EMPTY) this.trackKeeper(keeperPid, dead);
    if (state === SnapState.SAVED && !this.running.has(dead)) this.releaseDeadClaim();
    if (state === SnapState.ARMED && this.keepersSeen.has(keeperPid) && !this.keepers.has(keeperPid)) {
      h.finish({ code: TSVMM_EXIT.failed, reason: `vmm exited (${cause}) while it had no keeper (pid ${keeperPid} died before it and no new one was armed yet): the guest cannot be recovered` });
      return;
    }
    if (state === SnapState.EMPTY) {
      // No keeper was ever armed: the guest has not run a single instruction (or recovery is off).
      if (this.running.has(dead) || this.noRecovery) {
        h.finish({ code: TSVMM_EXIT.failed, reason: `vmm exited unexpectedly (${cause}) and recovery is off: the guest cannot be recovered` });
        return;
      }
      const d = this.bootPolicy.failed(cause);
      if ('giveUp' in d) { h.finish({ code: TSVMM_EXIT.failed, reason: `the vmm keeps dying while it boots: ${d.giveUp}` }); return; }
      h.logger.warn(`vmm exited (${cause}) while booting, before the guest ran; booting again${d.delayMs ? ` in ${d.delayMs} ms` : ''}`);
      this.primary = undefined;
      setTimeout(() => { if (!h.finished && !this.primary) this.spawn('boot'); }, d.delayMs);
      return;
    }
    if (state === SnapState.STOPPED) {
      // The guest had stopped; its report may still be in flight on the IPC channel.
      setTimeout(() => h.finish({ code: TSVMM_EXIT.failed, reason: `vmm exited (${cause}) after the guest stopped, without reporting why` }), 200);
      return;
    }
    const handover = dead === this.handingOver;
    const d = handover ? { delayMs: 0 } : this.policy.failed(cause);
    if ('giveUp' in d) { h.finish({ code: TSVMM_EXIT.failed, reason: `vmm recovery gave up: ${d.giveUp}` }); return; }
    this.pending ??= { cause: handover ? 'update' : cause, t0: process.hrtime.bigint(), dead };
    this.pending.dead = dead;
    if (this.spare) {
      // Warm path: the standby claims the keeper's snapshot by itself (futex). Go cold if it does not.
      const standby = this.spare;
      this.pending.fallback = setTimeout(() => {
        if (h.finished || this.spare !== standby) return;
        h.logger.warn(`vmm standby (pid ${standby.pid}) did not take over within ${STANDBY_TAKEOVER_TIMEOUT_MS} ms; starting a vmm cold`);
        this.spare = undefined;
        standby.kill('SIGKILL');
        void whenExited(standby).then(() => { if (!h.finished && this.pending) { this.releaseDeadClaim(); this.spawn('restore'); } });
      }, STANDBY_TAKEOVER_TIMEOUT_MS);
      return;
    }
    this.restoreAfter(d.delayMs);
  }

  /** Starts a cold vmm after `delayMs` (the policy's back-off when restored vmms keep dying). */
  private restoreAfter(delayMs: number): void {
    const h = this.host;
    if (delayMs) h.logger.warn(`vmm: ${this.policy.failuresInARow} failures in a row; restoring the saved guest in ${delayMs} ms`);
    const go = () => {
      if (h.finished || !this.pending) return;
      this.releaseDeadClaim();
      this.spawn('restore');
    };
    if (delayMs) setTimeout(go, delayMs); else go();
  }

  /**
   * The cold vmm started to recover the guest found the saved generation claimed and went, as it
   * does when a standby won it; with no standby running, no live vmm holds that claim (a claim word
   * left stale or corrupt: fault campaign 6, run 63/690, where the guest then waited for good). The
   * word is set back and the restore tried again, under the policy's back-off.
   */
  private staleClaim(): void {
    const h = this.host;
    const gen = this.snap.generation;
    const d = this.policy.failed('its snapshot was found claimed');
    if ('giveUp' in d) { h.finish({ code: TSVMM_EXIT.failed, reason: `vmm recovery gave up: ${d.giveUp}` }); return; }
    h.logger.warn(`vmm: saved generation ${gen} was found claimed (claim word ${this.snap.claimGen}) and no standby runs to hold it: the claim reset, restoring again`);
    this.snap.resetClaim(gen);
    this.restoreAfter(d.delayMs);
  }

  /** A vmm that claimed the saved snapshot died before resuming it: let the next one claim it. */
  private releaseDeadClaim(): void {
    const gen = this.snap.generation;
    if (this.snap.state === SnapState.SAVED && this.snap.claimGen === gen) this.snap.releaseClaim(gen);
  }

  private onSpareExit(cause: string): void {
    this.spare = undefined;
    this.spareWait?.(`it exited (${cause})`);
    if (this.pending) {
      // It died while taking over: whatever it claimed is free again, and a cold vmm finishes the job.
      this.releaseDeadClaim();
      clearTimeout(this.pending.fallback);
      this.spawn('restore');
    }
    const d = this.sparePolicy.failed(cause);
    if ('giveUp' in d) {
      if (!this.spareGaveUp) this.host.logger.warn(`vmm standby keeps failing (${d.giveUp}); running without one`);
      this.spareGaveUp = true;
      return;
    }
    setTimeout(() => { if (!this.host.finished && !this.spare && this.host.standby) this.spawn('standby'); }, d.delayMs);
  }

  private onReady(child: ChildProcess, r: ReadyMsg): void {
    const h = this.host;
    if (r.keeperPid) this.trackKeeper(r.keeperPid, child); // a standby's is dormant until it takes over
    if (r.standby) { if (child === this.spare) { this.spareReady.add(child); this.spareWait?.(undefined); } return; }
    const readyAt = process.hrtime.bigint();
    let p = this.pending;
    const warm = child === this.spare;
    if (warm) {
      // The standby took over (possibly before we saw the primary's exit).
      const dead = this.primary!;
      this.spare = undefined;
      this.primary = child;
      this.sparePolicy.succeeded();
      if (p) clearTimeout(p.fallback);
      else p = { cause: '', t0: readyAt, dead };
    } else if (child !== this.primary) return;
    this.running.add(child);
    this.guestRan = true;
    h.vmmRunning();
    this.policy.succeeded();
    this.bootPolicy.succeeded();
    this.pending = undefined;
    h.hangWatch.watchHeartbeat(child, 'vmm', child.pid, Component.Vmm, () => killHung(child));
    if (h.standby && !this.spare && !this.spareGaveUp) {
      setTimeout(() => { if (!h.finished && !this.spare) this.spawn('standby'); }, p ? STANDBY_RESPAWN_MS : 0);
    }
    if (!p) return;
    const resumed = r.resumedNs ? BigInt(r.resumedNs) : readyAt;
    // From whichever saw the death first: the keeper (its pidfd) or the supervisor (SIGCHLD).
    const died = r.diedNs && BigInt(r.diedNs) < p.t0 ? BigInt(r.diedNs) : p.t0;
    const totalMs = Number(resumed - died) / 1e6;
    const restartMs = Number(resumed - p.t0) / 1e6;
    const saveMs = r.diedNs && r.savedNs ? (r.savedNs - r.diedNs) / 1e6 : 0;
    const pending = p;
    if (pending.dead === this.handingOver) {
      this.handingOver = undefined;
      void whenExited(pending.dead).then((exitCause) => {
        if (warm) h.tookOver({ component: 'vmm', pid: child.pid ?? 0, fromPid: pending.dead.pid ?? 0, ms: totalMs, reason: 'update' });
        h.log(`updated vmm: the new build took over in ${totalMs.toFixed(2)} ms (keeper save ${saveMs.toFixed(2)} ms; the old vmm ${exitCause === 'exit code 0' ? 'exited cleanly' : `exited (${exitCause})`})`);
        this.updated?.({ pauseMs: totalMs, saveMs });
      });
      return;
    }
    void whenExited(pending.dead).then((exitCause) => {
      const cause = pending.cause || exitCause;
      this.recoveries.push({ cause, totalMs, saveMs, restartMs, warm });
      const rec = { component: 'vmm', cause, ms: totalMs, warm };
      if (warm) h.tookOver({ component: 'vmm', pid: child.pid ?? 0, fromPid: pending.dead.pid ?? 0, ms: totalMs, reason: 'recovery' });
      h.recovered(rec);
      h.logger.info(`recovered vmm (cause: ${cause}) in ${totalMs.toFixed(warm ? 2 : 1)} ms (keeper save ${saveMs.toFixed(2)} ms, ` +
        `${warm ? 'warm standby' : 'cold restart'}: ${restartMs >= 0 ? `exit seen to resumed ${restartMs.toFixed(warm ? 2 : 1)} ms` : `resumed ${(-restartMs).toFixed(2)} ms before the exit was seen`})`, { ...recoveryFields(rec), keeperSaveMs: Math.round(saveMs * 1000) / 1000 });
    });
  }

  // ---- keepers ----

  private trackKeeper(pid: number, vmm: ChildProcess): void {
    if (!pid) return;
    // A dead vmm's keeper is saving (or saved): still that vmm's, but nobody's to re-arm.
    if (!hasExited(vmm) || !this.keeperOf.has(vmm)) this.keeperOf.set(vmm, pid);
    if (this.keepersSeen.has(pid)) return;
    this.keepersSeen.add(pid);
    this.keepers.add(pid);
    this.host.processesChanged();
    // An armed keeper idles in poll() and beats every KEEPER.BEAT_MS after checking itself: one that
    // stops beating was broken while idle and would fail when its vmm dies; replaced now instead.
    // A keeper not armed for the running vmm (a standby's, or one saving) is judged only if stopped.
    const beat = () => (this.snap.keeperPid === pid && this.snap.state === SnapState.ARMED ? this.snap.keeperBeat : undefined);
    this.host.hangWatch.watchBeat(pid, 'keeper', beat, KEEPER_BEAT_TIMEOUT_MS, () => {
      this.keepersHung.add(pid);
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    });
    const gone = (r: { code?: number; signal?: number; error?: string }) => {
      this.keepers.delete(pid);
      this.host.hangWatch.unwatch(pid);
      const hung = this.keepersHung.delete(pid);
      // A keeper exits by itself only when its work is over: 0 (the guest stopped, or its vmm died while
      // it was dormant), 1 (its save failed: the vmm died), 3 (the supervisor died). A signal, 2 (its
      // poll failed) or 5 (its self-check failed while idle) leaves its vmm without one.
      if (!hung && r.signal === undefined && r.code !== KEEPER.EXIT_POLL && r.code !== KEEPER.EXIT_SELFCHECK) return;
      const cause = hung ? 'hang' : r.signal !== undefined ? `signal ${SIGNAL_NAME[r.signal] ?? r.signal}`
        : r.code === KEEPER.EXIT_SELFCHECK ? 'self-check failed (corrupt while idle)' : `exit code ${r.code}`;
      this.onKeeperExit(pid, vmm, cause);
    };
    // A keeper is our child (CLONE_PARENT) unless its vmm was adopted (its parent is then init):
    // that one is watched by pidfd, its status read without reaping (supervisor/adopt.ts).
    (isOurChild(pid) ? keeper.waitExit(pid) : waitNotOurChild(pid)).then(gone, (e: Error) => gone({ error: e.message }));
  }

  private onKeeperExit(pid: number, vmm: ChildProcess, cause: string): void {
    const h = this.host;
    if (h.finished || this.keeperOf.get(vmm) !== pid || hasExited(vmm)) return;
    // Its vmm may be dying at this very moment: a keeper that started saving did its job.
    if (this.snap.keeperPid === pid && this.snap.state !== SnapState.ARMED) return;
    if (vmm === this.spare) {
      h.logger.warn(`keeper (pid ${pid}) of the vmm standby (pid ${vmm.pid}) died (${cause}); replacing the standby`, { target: 'keeper' });
      vmm.kill('SIGKILL');
      return;
    }
    if (vmm !== this.primary || !this.running.has(vmm)) return;
    h.logger.warn(`keeper (pid ${pid}) of vmm pid ${vmm.pid} died (${cause}): the vmm is unprotected; arming a new keeper`, { target: 'keeper' });
    this.keeperPending = { cause, t0: process.hrtime.bigint(), dead: pid, vmm };
    this.armKeeper();
  }

  /** Asks the running vmm for a new keeper (after the restart policy's delay). */
  private armKeeper(): void {
    const p = this.keeperPending;
    if (!p) return;
    const d = this.keeperPolicy.failed(p.cause);
    const ask = () => {
      if (this.host.finished || this.keeperPending !== p || hasExited(p.vmm)) return;
      sendTo(p.vmm, { armKeeper: { deadPid: p.dead } });
    };
    const delay = 'delayMs' in d ? d.delayMs : 0;
    if (delay) setTimeout(ask, delay); else ask();
  }

  private onKeeperArmed(child: ChildProcess, k: { pid: number; error?: string }): void {
    const p = this.keeperPending;
    if (!p || p.vmm !== child) return;
    if (!k.pid) {
      this.host.logger.warn(`vmm pid ${child.pid} could not arm a new keeper: ${k.error}; retrying`, { component: 'keeper' });
      this.armKeeper();
      return;
    }
    this.keeperPending = undefined;
    this.keeperPolicy.succeeded();
    this.trackKeeper(k.pid, child);
    const ms = Number(process.hrtime.bigint() - p.t0) / 1e6;
    const rec = { component: 'keeper', cause: p.cause, ms };
    this.host.recovered(rec);
    this.host.logger.info(`recovered keeper (cause: ${p.cause}) in ${ms.toFixed(1)} ms (new keeper pid ${k.pid} for vmm pid ${child.pid})`, recoveryFields(rec));
  }

}
