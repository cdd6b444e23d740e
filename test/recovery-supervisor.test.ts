/**
 * The supervisor is recoverable too (contracts/orphan.ts, supervisor/guardian-main.ts,
 * supervisor/adopt.ts): SIGKILL it again and again under a verifying disk workload and the VM's
 * guardian starts a new supervisor that adopts the running (confined, as by default) vmm,
 * driver-domain and keeper each time; `tsvmm ps/ls` work after every kill, the guest sees no
 * error, `tsvmm stop` ends everything (no orphan, no runtime dir) and the image is intact. SIGHUP
 * and a closed stdout do not stop it at all.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import { guestLines, requireKvm } from './helpers/tsvmm';
import { runScenario, sleep, startVm, TestVm } from './helpers/control-plane';
import { checkImage } from './helpers/blk-image';
import { killRole, ps, ROLES, stopAndCheckClean } from './helpers/role-kill';

const KILLS = Number(process.env.TSVMM_SUPERVISOR_KILLS ?? 20);
const NEED = ROLES.filter((r) => r !== 'keeper');

/**
 * Runs `body` against `vm`, then stops it and asserts nothing is left: stop exits 0, no process
 * holds the guest's RAM, no runtime dir. On a failure the VM is stopped and the error carries it
 * (runScenario prints its output).
 */
async function stoppedClean(vm: TestVm, body: () => Promise<void>): Promise<void> {
  try {
    await body();
    const { stop, leftovers, runDirLeft } = await stopAndCheckClean(vm);
    assert.equal(stop.status, 0, stop.stderr);
    assert.deepEqual(leftovers, [], 'processes still hold the guest after stop');
    assert.equal(runDirLeft, false, 'stale runtime dir');
  } catch (e) {
    (e as { vm?: unknown }).vm = vm;
    try { vm.cli(['stop', '--name', vm.name]); } catch { /* best effort */ }
    throw e;
  }
}

describe('supervisor recovery', function () {
  this.timeout(600_000);
  before(requireKvm);

  it(`survives ${KILLS} SIGKILLs of the supervisor under a verifying disk workload; ps, ls and stop work after each`, () => runScenario(async () => {
    const vm = await startVm({ name: `srk${process.pid}` });
    await stoppedClean(vm, async () => {
      while (vm.progress() < 2) await sleep(50);
      const supervisors = new Set<number>();
      for (let k = 0; k < KILLS; k++) {
        const r = await killRole(vm, 'supervisor', NEED);
        supervisors.add(r.pid);
        // The vmm, driver-domain and keeper are adopted, not replaced.
        await sleep(50 + Math.random() * 200);
      }
      assert.equal(supervisors.size, KILLS);
      // A vmm crash after all that is still survived: the adopted keeper saves it.
      await killRole(vm, 'vmm', NEED);
    });
    const lines = guestLines(vm.out());
    assert.ok(!lines.some((l) => l.word === 'error' || l.word === 'blk-error'), vm.out().split('\n').filter((l) => /@(blk-)?error/.test(l)).slice(0, 5).join('\n'));
    assert.equal(lines.filter((l) => l.word === 'blk-progress').pop()!.fields.errors, '0');
    assert.equal(vm.err().split('\n').filter((l) => l.includes('recovered supervisor')).length, KILLS, vm.err());
    const check = checkImage(`${vm.dir}/${vm.name}.img`, { bs: 4096, count: 2000 });
    assert.equal(check.errorCount, 0, check.errors.slice(0, 5).join('\n'));
    fs.rmSync(vm.dir, { recursive: true, force: true });
    return vm;
  }));

  it('a sample of the kill campaign (bench/kill-campaign.ts): every role by pid, round-robin, the VM whole after each', () => runScenario(async () => {
    const vm = await startVm({ name: `src${process.pid}` });
    const roles = ROLES;
    await stoppedClean(vm, async () => {
      while (vm.progress() < 2) await sleep(50);
      for (let k = 0; k < 2 * roles.length; k++) await killRole(vm, roles[k % roles.length], ROLES);
    });
    assert.equal(guestLines(vm.out()).filter((l) => l.word === 'error' || l.word === 'blk-error').length, 0);
    assert.equal(checkImage(`${vm.dir}/${vm.name}.img`, { bs: 4096, count: 2000 }).errorCount, 0);
    fs.rmSync(vm.dir, { recursive: true, force: true });
    return vm;
  }));

  it('does not stop on SIGHUP or when its stdout and stderr are closed', () => runScenario(async () => {
    const vm = await startVm({ name: `srh${process.pid}` });
    await stoppedClean(vm, async () => {
      while (vm.progress() < 1) await sleep(50);
      const sup = ps(vm).pids.get('supervisor')!;
      process.kill(sup, 'SIGHUP');
      // `tsvmm run | head -3`: the reader goes away.
      vm.proc.stdout.destroy();
      vm.proc.stderr.destroy();
      await sleep(1500);
      const after = ps(vm);
      assert.equal(after.pids.get('supervisor'), sup, `the supervisor did not survive: ${after.error ?? ''}`);
      assert.ok(after.pids.get('vmm') && after.pids.get('driver-domain'));
    });
    fs.rmSync(vm.dir, { recursive: true, force: true });
    return vm;
  }));
});
