/**
 * Processes the supervisor watches but did not start: what a supervisor adopted from a dead one
 * (supervisor/adopt.ts), and the keepers an adopted vmm clones (CLONE_PARENT gives them the vmm's
 * parent, init). No waitid for them: their exit comes from a pidfd, their status from
 * PIDFD_GET_INFO or the zombie's /proc entry (native/kvm/pidfd.cc).
 */
import * as fs from 'fs';
import { native } from '../native/kvm';
import { NativePidfd, waitExited } from '../contracts/pidfd';

const pidfd = native as unknown as NativePidfd & { pidfdOpen(pid: number): number };

/** Is `pid` a child of this process? */
export function isOurChild(pid: number): boolean {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]) === process.pid;
  } catch {
    return true; // gone already: waitid says how, if it was ours
  }
}

/** As keeper.waitExit, for a process that is not our child: {code} | {signal} | {error}. */
export async function waitNotOurChild(pid: number): Promise<{ code?: number; signal?: number; error?: string }> {
  const fd = pidfd.pidfdOpen(pid);
  if (fd < 0) return { error: 'already gone' };
  const e = await waitExited(pidfd, fd, pid);
  fs.closeSync(fd);
  return 'code' in e ? { code: e.code } : 'signal' in e ? { signal: e.signal } : { error: 'exit status unknown' };
}
