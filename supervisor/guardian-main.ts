import '../contracts/process';
/**
 * The VM's guardian (docs/architecture.md, "Recovery" and "Confinement"): the one process that
 * starts a new supervisor when the VM's supervisor dies. The components run confined (no fork, no
 * exec, an unprivileged uid: contracts/confinement.ts) and could not start one with the privileges a
 * supervisor needs; the guardian keeps the supervisor's (it is started by it, as root when the
 * supervisor is) and does nothing else: no guest-facing or client-facing input reaches it.
 *
 * `node guardian-main.js NAME SUPERVISOR_PID`, started detached by the supervisor
 * (supervisor/guardian.ts). It waits on a pidfd of the supervisor; when that one has died and the VM
 * still runs (its run record is still there: a supervisor that ends the VM removes it), it starts
 * `adopt-main.js NAME` (supervisor/adopt.ts), which adopts the running components, and watches that
 * one in turn. It exits when the VM has ended, or on SIGTERM (a supervisor that ends the VM sends
 * it). If it dies itself, the supervisor starts another (supervisor/guardian.ts).
 *
 * A supervisor that lives but no longer works (hung: stopped, in a busy loop, deadlocked; a flipped
 * register left one asleep with the VM unprotected, campaign 6 run 66/230) is one that died: the
 * guardian watches its beat in the state page (fd 3, TSVMM_SUPERVISOR_HANG_MS) with the components'
 * hang watch and its evidence, kills it, and a new supervisor adopts the VM with cause `hang`.
 */
import * as fs from 'fs';
import * as path from 'path';
import { spawn } from 'child_process';
import { native } from '../native/kvm';
import { describeExit, NativePidfd, waitExited } from '../contracts/pidfd';
import { readSupervisorPid, runRecordPath, vmPaths } from '../contracts/paths';
import { quietStdio } from './quiet-stdio';
import { Logger, logSettings, setProcessLogger } from '../contracts/log';
import { startNode, startPhase } from '../contracts/start-trace';
import { componentExecArgv } from '../contracts/v8-flags';
import { Component, mapDevicePage } from '../contracts/state-page';
import { HangWatch } from './hang-watch';

const pidfd = native as unknown as NativePidfd & { pidfdOpen(pid: number): number };
const ADOPT_ENTRY = path.resolve(__dirname, 'adopt-main.js');
/** A supervisor that could not even be started is retried after this. */
const RETRY_MS = 200;

// The level and format `tsvmm run` chose come with the environment the supervisor passed on.
const logger = setProcessLogger(quietStdio(new Logger({ component: 'guardian', ...logSettings() })));
const log = (line: string) => logger.warn(line);
const [name, pidArg] = process.argv.slice(2);
if (!name || !/^\d+$/.test(pidArg ?? '')) {
  log('this process is started by `tsvmm run`, not by hand');
  process.exit(2);
}
process.on('SIGTERM', () => process.exit(0));
const paths = vmPaths(name);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The state memfd the supervisor handed us (supervisor/guardian.ts). */
const GUARDIAN_STATE_FD = 3;
/** How often a new supervisor's beat is looked at until it has started beating. */
const FIRST_BEAT_POLL_MS = 100;
const hangMs = Number(process.env.TSVMM_SUPERVISOR_HANG_MS ?? 0);
const page = hangMs > 0 ? mapDevicePage(GUARDIAN_STATE_FD) : undefined;
// A supervisor's main thread never waits synchronously: asleep past the threshold (and at three
// checks in a row) it is hung, not waiting on a lock (campaign 7 run 81/490: asleep in a futex after a
// flip, judged only after 8.1 s at the components' 4 thresholds, after the campaign's probe gave up).
const hangWatch = page ? new HangWatch(page, hangMs, logger, 1) : undefined;
hangWatch?.start();
/** The supervisor the hang watch killed, if it did. */
let killedHung: number | undefined;

/**
 * Watches supervisor `pid`'s beat once it has started beating (a supervisor still starting has not;
 * its start is the adoption itself): a hung one is killed through its pidfd, and its death handled
 * as any other. Returns how to stop watching.
 */
function watchBeat(pid: number): () => void {
  if (!page || !hangWatch) return () => {};
  const fd = pidfd.pidfdOpen(pid);
  if (fd < 0) return () => {};
  const from = page.heartbeat(Component.Supervisor);
  const first = setInterval(() => {
    if (page.heartbeat(Component.Supervisor) === from) return;
    clearInterval(first);
    hangWatch.watchHeartbeat(page, 'supervisor', pid, Component.Supervisor, () => { killedHung = pid; pidfd.pidfdSignal(fd, 9); });
  }, FIRST_BEAT_POLL_MS);
  return () => { clearInterval(first); hangWatch.unwatch(page); fs.closeSync(fd); };
}

/** Resolves with how the supervisor `pid` ended (it is not our child). */
async function diedHow(pid: number): Promise<string> {
  const fd = pidfd.pidfdOpen(pid);
  if (fd < 0) return 'exited, status unknown'; // gone already
  try {
    return describeExit(await waitExited(pidfd, fd, pid));
  } finally {
    fs.closeSync(fd);
  }
}

async function guard(first: number): Promise<void> {
  let current = first;
  let unwatch = watchBeat(first);
  let died = diedHow(first);
  for (;;) {
    let cause = await died;
    const t0 = process.hrtime.bigint();
    unwatch();
    if (killedHung === current) cause = 'hang';
    // The VM ended with its supervisor (or the supervisor could not write the record: then there is
    // nothing to adopt from, and the components end by themselves when no one adopts them). Only
    // whether the record is there: the adopter reads it, and one it cannot read ends the VM and
    // removes the runtime dir with it (supervisor/adopt.ts abandon), which the next look here sees.
    // (Decoding it here would load the protobuf schemas: ~2.4 MiB of this process's memory for the
    // VM's whole life, or 50-100 ms on the supervisor's recovery if loaded only then.)
    if (!fs.existsSync(runRecordPath(paths))) return;
    const live = readSupervisorPid(name);
    if (live !== undefined && live !== process.pid) { current = live; unwatch = watchBeat(live); died = diedHow(live); continue; } // another took over
    const child = spawn(process.execPath, [...componentExecArgv('supervisor'), ADOPT_ENTRY, name], {
      stdio: ['ignore', 'inherit', 'inherit'], cwd: path.dirname(ADOPT_ENTRY),
      env: { ...process.env, TSVMM_ADOPT_CAUSE: cause, TSVMM_ADOPT_T0: String(t0), TSVMM_ADOPT_BY: `guardian ${process.pid}`, TSVMM_GUARDIAN_PID: String(process.pid) },
    });
    current = child.pid ?? 0;
    unwatch = current ? watchBeat(current) : () => {};
    died = new Promise((resolve) => {
      child.on('error', (e) => { log(`cannot start a supervisor for VM ${name}: ${e.message}`); void sleep(RETRY_MS).then(() => resolve('not started')); });
      // An adopter that failed by itself (an exit status, not a signal: one killed is replaced at
      // once) is not followed by another at once: the next look waits a moment.
      child.on('exit', (code, sig) => {
        const how = sig ? `signal ${sig}` : `exit code ${code}`;
        if (code === null || code === 0) resolve(how);
        else void sleep(RETRY_MS).then(() => resolve(how));
      });
    });
  }
}

startNode('guardian');
startPhase('guardian', 'watching the supervisor');
guard(Number(pidArg)).then(() => process.exit(0), (e: Error) => {
  log(`error: ${e.message}`);
  process.exit(1);
});
