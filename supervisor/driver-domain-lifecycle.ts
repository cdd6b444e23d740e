/**
 * The driver-domain's lifecycle. It holds no state of its own (queue progress
 * is in the state page; kicks wait in their eventfds), so a dead one is simply
 * started again (or its warm standby takes over) and re-attaches.
 */
import { ChildProcess } from 'child_process';
import { componentEntry } from './component-entry';
import { Component } from '../contracts/state-page';
import { LifecycleHost, recoveryFields } from './lifecycle';
import { TSVMM_EXIT } from '../contracts/exit-codes';
import { RESTART_LIMITS, RestartPolicy } from './restart-policy';
import { componentStdio, hasExited, killHung, ReadyMsg, replaceStandby, spawnProcess, whenExited } from './spawn';

/** After a standby took over, its replacement starts this much later (a Node start competes with the guest). */
export const STANDBY_RESPAWN_MS = 300;

export class DriverDomainLifecycle {
  private primary?: ChildProcess;
  private spare?: ChildProcess;
  private pending?: { cause: string; t0: bigint; update: boolean; fromPid?: number };
  /** The driver-domain `update()` told to go: its end is an update, not a recovery. */
  private handingOver?: ChildProcess;
  private readonly policy = new RestartPolicy('driver-domain', RESTART_LIMITS.driverDomain);
  private readonly sparePolicy = new RestartPolicy('driver-domain standby', RESTART_LIMITS.standby);
  private spareGaveUp = false;

  constructor(private readonly host: LifecycleHost) {}

  get pid(): number | undefined { return this.primary?.pid; }

  start(): void { this.spawn(); }

  /** Kills both (the VM is over). */
  stop(): void {
    this.spare?.kill('SIGKILL');
    this.primary?.kill('SIGKILL');
  }

  /**
   * Adopt mode: the dead supervisor's driver-domain is ours now (watched once it serves; a new one
   * if none was left).
   */
  adopt(dd: ChildProcess | undefined, serving: boolean): void {
    if (!dd) { this.spawn(); return; }
    this.spawn(undefined, dd);
    if (serving) {
      this.host.hangWatch.watchHeartbeat(dd, 'driver-domain', dd.pid, Component.DriverDomain, () => killHung(dd));
      if (this.host.standby) setTimeout(() => this.startSpare(), STANDBY_RESPAWN_MS);
    }
  }

  private spawn(standbyFor?: number, adopted?: ChildProcess): ChildProcess {
    const h = this.host;
    const child = spawnProcess({
      component: 'driver-domain',
      adopted,
      script: componentEntry('driver-domain'),
      stdio: componentStdio(h.held, 'driver-domain'),
      confinement: h.held.confinement,
      name: 'driver-domain', logger: h.logger,
      // Block I/O that io_uring does not serve inline (large transfers, the thread-pool fallback) runs
      // on libuv's pool: give the driver-domain a deep one.
      env: { UV_THREADPOOL_SIZE: '64', ...(standbyFor ? { TSVMM_STANDBY_FOR: String(standbyFor) } : {}) },
      onMessage: (m) => {
        if ('ready' in m && m.ready) {
          h.log(`driver-domain${m.ready.standby ? ' standby' : ''} ready (pid ${m.ready.pid})`);
          this.onReady(child, m.ready);
        } else if ('fatal' in m && m.fatal) {
          if (child === this.spare) {
            // A standby that failed to build: the primary is fine; drop it (its exit schedules a new one).
            h.logger.warn(`driver-domain standby failed: ${m.fatal.message}`);
            this.spareWait?.(m.fatal.message);
            child.kill('SIGKILL');
            return;
          }
          h.finish({ code: TSVMM_EXIT.failed, reason: m.fatal.message });
        }
      },
      onExit: (cause) => this.onExit(child, cause),
    });
    if (standbyFor) this.spare = child;
    else this.primary = child;
    h.processesChanged();
    return child;
  }

  private onExit(child: ChildProcess, cause: string): void {
    const h = this.host;
    h.hangWatch.unwatch(child);
    if (h.finished) return;
    if (child === this.spare) {
      this.spare = undefined;
      this.spareWait?.(`it exited (${cause})`);
      this.scheduleSpare(cause);
      return;
    }
    if (child !== this.primary) return;
    this.pending ??= { cause, t0: process.hrtime.bigint(), update: child === this.handingOver, fromPid: child.pid };
    if (this.spare) {
      // Warm: the standby saw the death on its pidfd and is (or soon is) serving.
      this.primary = this.spare;
      this.spare = undefined;
      return;
    }
    const d = this.policy.failed(cause);
    if ('giveUp' in d) { h.finish({ code: TSVMM_EXIT.failed, reason: `driver-domain recovery gave up: ${d.giveUp}` }); return; }
    this.primary = undefined;
    const restart = () => { if (!h.finished && !this.primary) this.spawn(); };
    if (d.delayMs) {
      h.logger.warn(`driver-domain: ${this.policy.failuresInARow} failures in a row; restarting it in ${d.delayMs} ms`);
      setTimeout(restart, d.delayMs);
    } else restart();
  }

  private scheduleSpare(cause: string): void {
    const h = this.host;
    const d = this.sparePolicy.failed(cause);
    if ('giveUp' in d) {
      if (!this.spareGaveUp) h.logger.warn(`driver-domain standby keeps failing (${d.giveUp}); running without one`);
      this.spareGaveUp = true;
      return;
    }
    setTimeout(() => this.startSpare(), d.delayMs);
  }

  private startSpare(): void {
    if (this.host.finished || !this.host.standby || this.spare || this.spareGaveUp || !this.primary?.pid) return;
    this.spawn(this.primary.pid);
  }

  /**
   * tsvmm update driver-domain: a standby started from the build installed now (it waits on a pidfd
   * of the running one) takes over when the running one is told to go (SIGTERM: it exits at once;
   * what it had in flight is resubmitted from the queue progress, as after a crash). A standby
   * that cannot start leaves the driver-domain as it was. Resolves with the handover time.
   */
  async update(): Promise<{ ms: number }> {
    const old = this.primary;
    if (!old?.pid || this.pending || hasExited(old)) throw new Error('the driver-domain is not serving right now (recovering?); try again');
    const stale = this.spare;
    this.spare = undefined;
    const standbyFor = old.pid;
    const why = await replaceStandby(stale, (settled) => { this.spareWait = settled; this.spawn(standbyFor); });
    this.spareWait = undefined;
    if (why !== undefined) throw new Error(`update refused, the VM runs on unchanged: the new driver-domain cannot take over: ${why}`);
    const t0 = process.hrtime.bigint();
    const served = new Promise<void>((resolve) => { this.tookOver = resolve; });
    this.handingOver = old;
    old.kill('SIGTERM');
    await served;
    this.tookOver = undefined;
    return { ms: Number(process.hrtime.bigint() - t0) / 1e6 };
  }
  private spareWait?: (failure: string | undefined) => void;
  /** Standbys that reported themselves built and waiting. */
  private readonly spareReady = new WeakSet<ChildProcess>();

  /** The warm standby (tsvmm run --standby): its pid, and whether it would take over now. */
  get standbyStatus(): { pid: number; ready: boolean } {
    const s = this.spare;
    return { pid: s?.pid ?? 0, ready: s !== undefined && this.spareReady.has(s) && !hasExited(s) && !this.pending };
  }
  private tookOver?: () => void;

  private onReady(child: ChildProcess, r: ReadyMsg): void {
    if (r.standby) { if (child === this.spare) { this.spareReady.add(child); this.spareWait?.(undefined); } return; }
    if (child === this.spare || child === this.primary) this.tookOver?.();
    const readyAt = process.hrtime.bigint();
    if (child === this.spare) {
      // Took over before we saw the primary's exit.
      const dead = this.primary!;
      this.spare = undefined;
      this.primary = child;
      void whenExited(dead).then((cause) => this.record(cause, readyAt, r, true, dead === this.handingOver, { child, fromPid: dead.pid ?? 0 }));
    } else if (child === this.primary && this.pending) {
      this.record(this.pending.cause, this.pending.t0, r, r.warm === true, this.pending.update, { child, fromPid: this.pending.fromPid ?? 0 });
    } else if (child !== this.primary) return;
    this.pending = undefined;
    this.policy.succeeded();
    if (r.warm) this.sparePolicy.succeeded();
    this.host.hangWatch.watchHeartbeat(child, 'driver-domain', child.pid, Component.DriverDomain, () => killHung(child));
    if (this.host.standby) setTimeout(() => this.startSpare(), r.warm ? STANDBY_RESPAWN_MS : 0);
  }

  private record(cause: string, t0: bigint, r: ReadyMsg, warm: boolean, update: boolean, by: { child: ChildProcess; fromPid: number }): void {
    const resumed = r.resumedNs ? BigInt(r.resumedNs) : process.hrtime.bigint();
    const died = r.diedNs && BigInt(r.diedNs) < t0 ? BigInt(r.diedNs) : t0;
    const ms = Number(resumed - died) / 1e6;
    if (warm) this.host.tookOver({ component: 'driver-domain', pid: by.child.pid ?? 0, fromPid: by.fromPid, ms, reason: update ? 'update' : 'recovery' });
    if (update) {
      // tsvmm update: planned, not a failure (no recovery event, no restart-policy count).
      this.handingOver = undefined;
      this.host.log(`updated driver-domain: the new build took over in ${ms.toFixed(2)} ms (the old driver-domain ${/^(exit code 0|signal SIGTERM)$/.test(cause) ? 'exited cleanly' : `exited (${cause})`})`);
      return;
    }
    const rec = { component: 'driver-domain', cause, ms, warm };
    this.host.recovered(rec);
    this.host.logger.info(`recovered driver-domain (cause: ${cause}) in ${ms.toFixed(warm ? 2 : 1)} ms (${warm ? 'warm standby' : 'cold restart'})`, recoveryFields(rec));
  }
}

