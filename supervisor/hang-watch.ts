/**
 * Hang detection for every supervised process, with evidence.
 *
 * A component with an event loop (vmm, driver-domain, priv-domain) bumps its
 * heartbeat counter in the device state page every 20 ms. A counter that has
 * not moved for the threshold is only a suspicion; the kernel says what the
 * main thread did meanwhile (/proc/PID/task/PID/schedstat: CPU time and
 * run-queue wait; /proc/PID/task/PID/stat: state), and the verdict is:
 *   - stopped (state T/t): hung;
 *   - it ran busyMs() of CPU or more without beating: hung (a busy loop; a
 *     healthy loop that gets a CPU beats once its current task ends, and on a
 *     loaded host one task (a restarted priv-domain's first requests in
 *     --lite-mode, a GC) was seen to take 54 ms of CPU: half the threshold);
 *   - runnable (R) but it got little CPU: not hung, the host is loaded (the
 *     kernel adds a wait to schedstat only once the thread runs, so a thread
 *     still queued shows neither run nor wait: its state says it);
 *   - blocked in the kernel (D): not hung until 4x the threshold;
 *   - asleep (S) with its loop not beating: a deadlock, or a wait on a lock
 *     that ends (a Node or V8 internal one: seen on a loaded host for ~400 ms):
 *     hung once asleep for 4x the threshold and at CONSECUTIVE_MISSES checks
 *     in a row; the evidence names the system call it sleeps in;
 *   - the supervisor's own check was late (it did not get a CPU either): no
 *     verdict at that check (the evidence above still accumulates).
 * A keeper has no event loop: asleep in poll() until its vmm dies, it wakes
 * every KEEPER.BEAT_MS to check itself and bump its beat in the snapshot
 * header; it is watched like a heartbeat with its own threshold (a few beats),
 * and a stopped one is hung once stopped for the threshold.
 * Every hang is logged with its evidence, counted, and handed to its owner's
 * kill(), which recovers it through the normal path with cause `hang`.
 */
import * as fs from 'fs';
import { Component, StatePage } from '../contracts/state-page';
import type { Logger } from '../contracts/log';

/** Default threshold (ms); env TSVMM_HANG_TIMEOUT_MS, `tsvmm run --hang-timeout`; 0 turns detection off. */
export const DEFAULT_HANG_TIMEOUT_MS = 250;
/** A sleeping (S) main thread past the threshold must be seen asleep this many checks in a row. */
export const CONSECUTIVE_MISSES = 3;
/** CPU time (ms) a main thread may use without beating before it counts as a busy loop: half the threshold, at least 50 ms. */
const busyMs = (timeoutMs: number) => Math.max(50, timeoutMs / 2);
/** A thread blocked in the kernel (D) or asleep (S) gets this many thresholds. */
const BLOCKED_FACTOR = 4;
/** x86-64 system calls a Node main thread sleeps in, for the evidence. */
const SYSCALL_NAME: Record<number, string> = {
  0: 'read', 1: 'write', 7: 'poll', 23: 'select', 35: 'nanosleep', 61: 'wait4', 202: 'futex', 230: 'clock_nanosleep',
  232: 'epoll_wait', 247: 'waitid', 270: 'pselect6', 271: 'ppoll', 281: 'epoll_pwait', 426: 'io_uring_enter', 441: 'epoll_pwait2',
};

/** The system call a sleeping thread is in, from /proc/PID/task/PID/syscall. */
function sleepingIn(pid: number): string {
  try {
    const n = Number(fs.readFileSync(`/proc/${pid}/task/${pid}/syscall`, 'latin1').split(' ')[0]);
    return Number.isInteger(n) ? SYSCALL_NAME[n] ?? `syscall ${n}` : 'user space';
  } catch {
    return 'unknown';
  }
}

interface Sched { run: number; wait: number }

/** A thread's CPU time and run-queue wait (ns), from schedstat. */
function schedstat(pid: number): Sched | undefined {
  try {
    const [run, wait] = fs.readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'latin1').split(' ').map(Number);
    return { run, wait };
  } catch {
    return undefined;
  }
}

/** The state letter (R, S, D, T, t, Z, ...) of a process's main thread. */
export function threadState(pid: number): string | undefined {
  try {
    const st = fs.readFileSync(`/proc/${pid}/task/${pid}/stat`, 'latin1');
    return st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

/** One hang the watch acted on. */
export interface Hang {
  component: string;
  pid: number;
  /** How long the heartbeat had been still (or the process stopped). */
  stillMs: number;
  /** What the kernel said, as logged. */
  evidence: string;
  /** Unix time (seconds) of the kill. */
  at: number;
}

interface Watched {
  name: string;
  pid: number;
  /** undefined: no heartbeat, only the stopped check. */
  slot?: Component;
  /** A counter of its own instead of a state-page slot (a keeper's beat); undefined when it does not apply now. */
  beat?: () => number | undefined;
  /** Its own threshold (ms), if not the watch's. */
  timeoutMs?: number;
  /** When it was first seen stopped (T), for the stopped check. */
  stoppedSince?: number;
  kill: () => void;
  last: number;
  since: number;
  sched?: Sched;
  misses: number;
  waiting?: string;
}

export class HangWatch {
  readonly hangs: Hang[] = [];
  private readonly watched = new Map<object | number, Watched>();
  private timer?: NodeJS.Timeout;
  private lastTick = 0;
  /** A snapshot stops the driver-domain and keeps the vmm's main thread busy on purpose: no verdicts meanwhile. */
  suspended = false;

  /**
   * `asleepFactor`: how many thresholds a main thread asleep (S) may go without beating before it
   * can be judged (a component's loop was seen waiting on a Node or V8 lock for ~400 ms; the
   * supervisor never waits synchronously, and its guardian judges it at 1).
   */
  constructor(private readonly page: StatePage, readonly timeoutMs: number, private readonly logger?: Logger, private readonly asleepFactor = BLOCKED_FACTOR) {}

  get enabled(): boolean { return this.timeoutMs > 0; }

  start(): void {
    if (!this.enabled || this.timer) return;
    this.lastTick = performance.now();
    this.timer = setInterval(() => this.check(), Math.max(5, Math.min(50, this.timeoutMs / 5)));
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.watched.clear();
  }

  /** Watches `pid`'s heartbeat in `slot` from now on; `kill` is called once if it hangs. */
  watchHeartbeat(key: object, name: string, pid: number | undefined, slot: Component, kill: () => void): void {
    if (!this.enabled || !pid) return;
    this.watched.set(key, { name, pid, slot, kill, last: this.page.heartbeat(slot), since: performance.now(), sched: schedstat(pid), misses: 0 });
  }

  /**
   * Watches `pid`'s own beat counter (a keeper's, in the snapshot header): hung as a heartbeat is,
   * with a threshold of at least `minTimeoutMs`. `beat()` undefined: not judged now (a keeper whose
   * vmm died is saving, not idle).
   */
  watchBeat(pid: number, name: string, beat: () => number | undefined, minTimeoutMs: number, kill: () => void): void {
    if (!this.enabled || !pid) return;
    this.watched.set(pid, { name, pid, beat, kill, last: beat() ?? 0, since: performance.now(), sched: schedstat(pid), misses: 0, timeoutMs: Math.max(this.timeoutMs, minTimeoutMs) });
  }

  /** Watches a process that has no heartbeat: only being stopped is a hang. */
  watchStopped(pid: number, name: string, kill: () => void): void {
    if (!this.enabled || !pid) return;
    this.watched.set(pid, { name, pid, kill, last: 0, since: performance.now(), misses: 0 });
  }

  unwatch(key: object | number): void { this.watched.delete(key); }

  private check(): void {
    const now = performance.now();
    if (this.suspended) {
      this.lastTick = now;
      for (const w of this.watched.values()) { w.since = now; w.last = w.slot === undefined ? 0 : this.page.heartbeat(w.slot); w.sched = schedstat(w.pid); }
      return;
    }
    // This check itself late: everything may have been starved. No verdict on what nobody could see.
    const stalled = now - this.lastTick > this.timeoutMs / 2;
    this.lastTick = now;
    for (const [key, w] of this.watched) {
      // A beat of its own (a keeper): stopped is judged at the watch's threshold, silence at its own.
      const stopped = w.slot === undefined ? this.judgeStopped(w, now, stalled) : undefined;
      const verdict = stopped ?? (w.slot !== undefined || w.beat ? this.judgeHeartbeat(w, now, stalled) : undefined);
      if (!verdict) continue;
      this.watched.delete(key);
      const still = now - (stopped ? w.stoppedSince ?? w.since : w.since);
      const thresholdMs = w.timeoutMs ?? this.timeoutMs;
      this.hangs.push({ component: w.name, pid: w.pid, stillMs: still, evidence: verdict, at: Date.now() / 1000 });
      this.logger?.warn(`${w.name} hung: ${stopped ? 'stopped' : 'no heartbeat'} for ${still.toFixed(0)} ms (threshold ${thresholdMs} ms; ${verdict}); killing pid ${w.pid}`,
        { event: 'hang-kill', target: w.name, targetPid: w.pid, stillMs: Math.round(still), thresholdMs, evidence: verdict });
      w.kill();
    }
  }

  private judgeStopped(w: Watched, now: number, stalled: boolean): string | undefined {
    const state = threadState(w.pid);
    if (state !== 'T' && state !== 't') { w.stoppedSince = now; return undefined; }
    w.stoppedSince ??= now;
    return !stalled && now - w.stoppedSince >= this.timeoutMs ? `state ${state}` : undefined;
  }

  /** undefined while not hung; else the evidence. */
  private judgeHeartbeat(w: Watched, now: number, stalled: boolean): string | undefined {
    const hb = w.beat ? w.beat() : this.page.heartbeat(w.slot!);
    if (hb === undefined) { w.since = now; return undefined; }
    if (hb !== w.last) {
      w.last = hb; w.since = now; w.sched = schedstat(w.pid); w.misses = 0; w.waiting = undefined;
      return undefined;
    }
    const timeoutMs = w.timeoutMs ?? this.timeoutMs;
    const still = now - w.since;
    if (still < timeoutMs || stalled) return undefined;
    const sched = schedstat(w.pid);
    const ranMs = sched && w.sched ? (sched.run - w.sched.run) / 1e6 : 0;
    const waitedMs = sched && w.sched ? (sched.wait - w.sched.wait) / 1e6 : 0;
    const state = threadState(w.pid) ?? '?';
    const evidence = `its main thread ran ${ranMs.toFixed(0)} ms, waited for a CPU ${waitedMs.toFixed(0)} ms, state ${state}`;
    if (state === 'T' || state === 't') return evidence;
    if (ranMs >= busyMs(timeoutMs)) return evidence;
    const notYet = (why: string) => {
      if (w.waiting !== why) this.logger?.info(`${w.name}: no heartbeat for ${still.toFixed(0)} ms, but ${why}: not a hang (${evidence})`, { event: 'hang-suspected', target: w.name, targetPid: w.pid, evidence });
      w.waiting = why;
      w.misses = 0;
      return undefined;
    };
    if (state === 'R') return notYet('its main thread is runnable and waiting for a CPU (host overloaded)');
    if (state === 'D') return still < BLOCKED_FACTOR * timeoutMs ? notYet('its main thread is blocked in the kernel (state D)') : evidence;
    const where = sleepingIn(w.pid);
    if (still < this.asleepFactor * timeoutMs) return notYet(`its main thread is asleep (in ${where})`);
    if (++w.misses < CONSECUTIVE_MISSES) return undefined;
    return `${evidence}, asleep in ${where} at ${w.misses} checks in a row`;
  }
}
