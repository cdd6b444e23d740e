/**
 * The typed face of native/kvm/pidfd.cc: what a supervisor needs to adopt processes it did not
 * start (recovery/adopt.ts) and what an orphaned component needs to say how its supervisor died.
 */
import * as os from 'os';

export type ExitInfo = { code: number } | { signal: number } | { unknown: true };

export interface NativePidfd {
  /** Resolves once the process behind `pidfd` has exited (any parent); does not reap, does not close. */
  pidfdWait(pidfd: number, pid: number): Promise<ExitInfo>;
  /** How it exited, if it has and that is known yet. */
  pidfdExit(pidfd: number, pid: number): ExitInfo;
  /** pidfd_getfd(2): a copy of that process's fd `target` (close-on-exec). Throws with the errno. */
  pidfdGetfd(pidfd: number, target: number): number;
  /** pidfd_send_signal(2): 0 or -errno. */
  pidfdSignal(pidfd: number, sig: number): number;
  /** poll(2) for POLLIN: 1 readable (a pidfd: the process exited), 0 timeout, -errno. Blocking. */
  pollIn(fd: number, timeoutMs: number): number;
}

/**
 * Resolves with how the process behind `pidfd` exited, once that pidfd polls readable from this
 * thread too: a native wait that resolved without it (a fault in its thread) is waited again. Every
 * "it exited" that leads to starting a replacement goes through here.
 */
export async function waitExited(n: NativePidfd, pidfd: number, pid: number): Promise<ExitInfo> {
  for (;;) {
    const e = await n.pidfdWait(pidfd, pid);
    if (n.pollIn(pidfd, 0) === 1) return e;
  }
}

export function signalName(n: number): string {
  const e = Object.entries(os.constants.signals).find(([, v]) => v === n);
  return e ? e[0] : `signal ${n}`;
}

/** "signal SIGKILL", "exit code 1", or "status unknown". */
export function describeExit(e: ExitInfo): string {
  if ('signal' in e) return `signal ${signalName(e.signal)}`;
  if ('code' in e) return `exit code ${e.code}`;
  return 'exited, status unknown';
}
