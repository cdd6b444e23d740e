/**
 * One restart policy for every component (supervisor/restart-policy.ts), and what it means for the
 * vmm (issue 14): recovery never gives up while a valid snapshot exists (restored vmms killed again
 * and again before they resume only slow it down), and a vmm killed while it boots, before its
 * keeper is armed, boots again from the start instead of ending the VM.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import { requireKvm } from './helpers/tsvmm';
import { blkLoopVm, guestErrors, RunningVm } from './helpers/fault-harness';
import { RESTART_LIMITS, RestartPolicy } from '../supervisor/restart-policy';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The supervisor's vmm children, with whether each restores a snapshot (TSVMM_RESTORE=1). */
function vmmChildren(supervisor: number): { pid: number; restore: boolean }[] {
  let kids: number[] = [];
  try { kids = fs.readFileSync(`/proc/${supervisor}/task/${supervisor}/children`, 'latin1').trim().split(/\s+/).filter(Boolean).map(Number); } catch { return []; }
  const out: { pid: number; restore: boolean }[] = [];
  for (const pid of kids) {
    let env = '';
    try { env = fs.readFileSync(`/proc/${pid}/environ`, 'latin1'); } catch { continue; }
    const vars = env.split('\0');
    if (!vars.some((v) => v.startsWith('TSVMM_VCPUS='))) continue; // only a vmm gets it
    out.push({ pid, restore: vars.includes('TSVMM_RESTORE=1') });
  }
  return out;
}

/** Kills each new vmm matching `which` as soon as it appears, `n` times. */
async function killNewVmms(vm: RunningVm, n: number, which: (c: { pid: number; restore: boolean }) => boolean, ms = 30_000): Promise<number[]> {
  const killed: number[] = [];
  const deadline = Date.now() + ms;
  while (killed.length < n) {
    if (vm.exit) throw new Error(`tsvmm exited (${JSON.stringify(vm.exit)}) after ${killed.length} kills:\n${vm.err}`);
    if (Date.now() > deadline) throw new Error(`only ${killed.length} of ${n} vmms seen:\n${vm.err}`);
    for (const c of vmmChildren(vm.child.pid!)) {
      if (killed.includes(c.pid) || !which(c)) continue;
      try { process.kill(c.pid, 'SIGKILL'); killed.push(c.pid); } catch { /* gone */ }
    }
    await sleep(1);
  }
  return killed;
}

describe('restart policy', () => {
  it('restarts at once, then backs off (doubling, capped), gives up only past its limit, and starts over after a success', () => {
    const p = new RestartPolicy('x', { immediate: 2, firstDelayMs: 100, maxDelayMs: 500, maxInARow: 6 });
    const delays = Array.from({ length: 6 }, () => p.failed('boom'));
    assert.deepEqual(delays, [{ delayMs: 0 }, { delayMs: 0 }, { delayMs: 100 }, { delayMs: 200 }, { delayMs: 400 }, { delayMs: 500 }]);
    assert.match((p.failed('boom') as { giveUp: string }).giveUp, /7 failures in a row \(last cause: boom\)/);
    p.succeeded();
    assert.deepEqual(p.failed('again'), { delayMs: 0 });
    assert.equal(p.failures, 8);
  });

  it('the vmm, driver-domain, priv-domain and keeper never give up', () => {
    for (const l of [RESTART_LIMITS.vmm, RESTART_LIMITS.driverDomain, RESTART_LIMITS.privDomain, RESTART_LIMITS.keeper]) {
      const p = new RestartPolicy('x', l);
      for (let i = 0; i < 1000; i++) assert.ok('delayMs' in p.failed('x'));
    }
  });

  describe('on a real VM', function () {
    this.timeout(120_000);
    before(requireKvm);
    let vm: RunningVm | undefined;
    afterEach(async () => { await vm?.stop(); vm?.cleanup(); vm = undefined; });

    it('a vmm killed while it boots (before its keeper is armed) boots again; zero guest errors', async () => {
      vm = blkLoopVm([], {}, { n: 500, report: 100 });
      const v = vm;
      const [first] = await killNewVmms(v, 1, (c) => !c.restore);
      await v.waitFor(() => v.count('@blk-progress') >= 2, 60_000, 'progress from the vmm booted again');
      assert.match(v.err, /while booting, before the guest ran; booting again/);
      assert.notEqual(v.pid.vmm, first);
      assert.deepEqual(guestErrors(v.out), []);
    });

    it('four restored vmms killed in a row before they resume: recovery backs off and resumes the guest; zero guest errors', async () => {
      vm = blkLoopVm([], {}, { n: 500, report: 100 });
      const v = vm;
      await v.waitFor(() => v.count('@blk-progress') >= 2 && v.pid.vmm > 0, 60_000, 'the first progress lines');
      const dead = v.pid.vmm;
      process.kill(dead, 'SIGKILL');
      await killNewVmms(v, 4, (c) => c.restore);
      await v.waitFor(() => v.recoveries.some((r) => r.component === 'vmm'), 30_000, 'the vmm recovery');
      const p = v.count('@blk-progress');
      await v.waitFor(() => v.count('@blk-progress') > p + 1, 30_000, 'guest progress after the recovery');
      assert.match(v.err, /vmm: \d+ failures in a row; restoring the saved guest in \d+ ms/);
      assert.deepEqual(guestErrors(v.out), []);
    });
  });
});
