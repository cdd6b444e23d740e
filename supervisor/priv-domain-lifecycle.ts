/**
 * The priv-domain's lifecycle (priv-domain/main.ts): the guest and its I/O
 * never depend on it, so it is always restarted (the RestartPolicy backs off
 * when restarted ones keep dying before they are ready) and watched like the
 * others: once ready, its heartbeat in the state page (Component.PrivDomain);
 * a stopped or hung priv-domain is killed and restarted with cause `hang`.
 */
import * as path from 'path';
import { ChildProcess } from 'child_process';
import { Component } from '../contracts/state-page';
import { METRICS_PREVIOUS_ENV, vmPaths } from '../contracts/paths';
import { readPromTarget, writePromTarget } from './prom-target';
import { ControlRequest, SupervisorMessage } from '../proto';
import { LifecycleHost, recoveryFields, RunResult } from './lifecycle';
import { RESTART_LIMITS, RestartPolicy } from './restart-policy';
import { hasExited, killHung, sendTo, spawnProcess, whenExited } from './spawn';
import { FD } from '../contracts/fds';
import { trimMallocOnceSettled } from '../contracts/malloc-trim';

const SCRIPT = path.resolve(__dirname, '..', 'priv-domain', 'main.js');

export interface PrivDomainEvents {
  /** A priv-domain is ready (the first, or a restarted one): it needs the full status. */
  ready(): void;
  request(req: ControlRequest): void;
}

/** How long a VM that ends waits at most for its first priv-domain, still starting, to be ready and record it. */
const FIRST_READY_WAIT_MS = 5000;

export class PrivDomainLifecycle {
  private child?: ChildProcess;
  private readyOnce = false;
  private pending?: { cause: string; t0: bigint };
  private readonly policy = new RestartPolicy('priv-domain', RESTART_LIMITS.privDomain);
  private stopped = false;
  private metricsAddr = '';
  /** finish() (it runs once) waiting for the first priv-domain's ready. */
  private onFirstReady?: () => void;

  constructor(private readonly host: LifecycleHost, private readonly env: Record<string, string>, private readonly events: PrivDomainEvents) {}

  /** pid of the priv-domain while it is alive. */
  get pid(): number | undefined { return this.child && !hasExited(this.child) ? this.child.pid : undefined; }
  get connected(): boolean { return this.child?.connected === true; }

  start(): void { this.spawn(); }

  /**
   * The VM ended: a ready priv-domain gets `finished`, records it in its store and exits (killed
   * after `timeoutMs`); one that is not running or not ready is killed.
   */
  async finish(r: RunResult, timeoutMs: number): Promise<'recorded' | 'timeout' | 'not running'> {
    this.stopped = true;
    const child = this.child;
    // A VM that ends while its first priv-domain is still starting (a short-lived guest: the
    // priv-domain starts once the guest runs, at nice 10) waits for it (FIRST_READY_WAIT_MS at
    // most: a Node start on a loaded host), so that the store has the VM and its exit too.
    if (child && !hasExited(child) && child.connected && !this.readyOnce && !this.pending) await this.firstReady(child, FIRST_READY_WAIT_MS);
    if (!child || hasExited(child) || !child.connected || !this.readyOnce || this.pending) {
      try { child?.kill('SIGKILL'); } catch { /* gone */ }
      return 'not running';
    }
    const exited = whenExited(child);
    sendTo(child, { finished: { code: r.code, reason: r.reason } });
    let late = false;
    const timer = setTimeout(() => { late = true; child.kill('SIGKILL'); }, timeoutMs);
    await exited;
    clearTimeout(timer);
    return late ? 'timeout' : 'recorded';
  }

  send(msg: SupervisorMessage): void { if (this.child) sendTo(this.child, msg); }

  private spawn(): void {
    if (this.stopped || this.host.finished) return;
    const h = this.host;
    // The port the last priv-domain had (this supervisor's, or an adopted VM's file_sd target).
    const previous = this.metricsAddr || readPromTarget(vmPaths(h.cfg.name).promTargets);
    const child = spawnProcess({
      component: 'priv-domain',
      script: [SCRIPT],
      stdio: privStdio(h.held.stateFd, h.held.configFd, h.held.apiFd, h.held.logFd),
      env: { ...this.env, ...(previous && previous !== 'none' ? { [METRICS_PREVIOUS_ENV]: previous } : {}) },
      confinement: h.held.confinement,
      name: 'priv-domain', logger: h.logger,
      // Its store and console log are relative to its state directory (supervisor/control.ts).
      cwd: vmPaths(h.cfg.name).stateDir,
      onMessage: (m) => {
        if (child !== this.child) return;
        if ('ready' in m && m.ready) this.onReady(child, m.ready.pid, m.ready.metricsAddr ?? '');
        else if ('controlRequest' in m && m.controlRequest) this.events.request(m.controlRequest);
        else if ('fatal' in m && m.fatal) h.logger.error(`priv-domain: ${m.fatal.message}`);
      },
      onExit: (cause) => {
        h.hangWatch.unwatch(child);
        if (child !== this.child || this.stopped || h.finished) return;
        this.pending ??= { cause, t0: process.hrtime.bigint() };
        const d = this.policy.failed(cause);
        // No limit: the policy never gives up on the priv-domain, it only slows down.
        const delay = 'delayMs' in d ? d.delayMs : RESTART_LIMITS.privDomain.maxDelayMs;
        if (delay) {
          h.logger.warn(`priv-domain: ${this.policy.failuresInARow} failures in a row (last: ${cause}); restarting it in ${delay} ms`);
          setTimeout(() => this.spawn(), delay).unref();
        } else this.spawn();
      },
    });
    this.child = child;
  }

  /** Resolves once the first priv-domain has reported ready or exited, or after `ms`. */
  private firstReady(child: ChildProcess, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => { clearTimeout(timer); resolve(); };
      const timer = setTimeout(done, ms);
      this.onFirstReady = done;
      void whenExited(child).then(done);
    });
  }

  private onReady(child: ChildProcess, pid: number, metricsAddr: string): void {
    const h = this.host;
    this.onFirstReady?.();
    if (this.stopped) { this.readyOnce = true; return; } // the VM has ended: finish() records it now
    this.policy.succeeded();
    const name = h.cfg.name;
    const metrics = metricsAddr && metricsAddr !== 'none' ? `http://${metricsAddr}/metrics` : 'none (tsvmm metrics still works)';
    if (!this.readyOnce) {
      this.readyOnce = true;
      h.log(`priv-domain ready (pid ${pid})`);
      // What an operator needs next, once: where to reach the VM and how to stop it.
      h.logger.info(`VM "${name}" is up`, { event: 'up', socket: vmPaths(name).socket, metricsUrl: metrics.startsWith('http') ? metrics : undefined, logFile: vmPaths(name).log });
      h.log(`  API socket  ${vmPaths(name).socket}`);
      h.log(`  metrics     ${metrics}`);
      h.log(`  console     tsvmm console --name ${name}   (Ctrl-] detaches)`);
      h.log(`  stop        tsvmm stop --name ${name}, or Ctrl-C here`);
      h.log(`  log         ${vmPaths(name).log}`);
      // The supervisor has started everything (or adopted it): what that freed goes back.
      trimMallocOnceSettled();
    } else if (metricsAddr !== this.metricsAddr) {
      h.log(`metrics moved to ${metrics}`);
    }
    // Each ready priv-domain: the file_sd target says where it listens now (or goes, without an endpoint).
    const failed = writePromTarget(vmPaths(name).promTargets, metricsAddr, name);
    if (failed) h.logger.warn(`cannot write ${vmPaths(name).promTargets} (${failed}): Prometheus file_sd discovery of this VM is off`);
    this.metricsAddr = metricsAddr;
    h.hangWatch.watchHeartbeat(child, 'priv-domain', child.pid, Component.PrivDomain, () => killHung(child));
    const p = this.pending;
    this.pending = undefined;
    if (p) {
      const ms = Number(process.hrtime.bigint() - p.t0) / 1e6;
      const rec = { component: 'priv-domain', cause: p.cause, ms };
      h.recovered(rec);
      h.logger.info(`recovered priv-domain (cause: ${p.cause}) in ${ms.toFixed(1)} ms`, recoveryFields(rec));
    }
    this.events.ready();
  }
}

/** 5 state, 8 config, the API socket the supervisor bound, the log file (contracts/fds.ts). */
function privStdio(stateFd: number, configFd: number, apiFd: number, logFd: number): ('ignore' | 'inherit' | 'ipc' | number)[] {
  const stdio: ('ignore' | 'inherit' | 'ipc' | number)[] = ['ignore', 'ignore', 'inherit', 'ipc'];
  for (let fd = stdio.length; fd <= FD.LOG; fd++) stdio.push('ignore');
  if (logFd >= 0) stdio[FD.LOG] = logFd;
  stdio[FD.STATE] = stateFd;
  stdio[FD.CONFIG] = configFd;
  if (apiFd >= 0) stdio[FD.API_LISTEN] = apiFd;
  return stdio;
}
