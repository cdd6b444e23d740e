/**
 * tsvmm update (issue 17): the running vmm and driver-domain are replaced by the installed build
 * through their standby path while the guest verifies its disk I/O, without a guest reboot.
 */
import * as assert from 'assert';
import * as fs from 'fs';
import { blkLoopVm, guestErrors } from './helpers/fault-harness';
import { requireKvm, tsvmm } from './helpers/tsvmm';

describe('tsvmm update', function () {
  this.timeout(120_000);
  before(requireKvm);

  it('replaces the vmm, then every component, under blk-loop verify=1: the old ones exit cleanly, the guest never reboots and sees zero errors', async () => {
    const name = `update-${process.pid}`;
    const vm = blkLoopVm(['--name', name, '--metrics-addr', 'none']);
    try {
      await vm.waitFor(() => vm.count('@blk-progress') >= 3, 30_000, 'blk progress');
      const vmm0 = vm.pid.vmm;
      const r1 = tsvmm(['update', 'vmm', '--name', name], { timeoutMs: 60_000 });
      assert.strictEqual(r1.status, 0, `${r1.stderr}\n${vm.err}`);
      assert.match(r1.stdout, /vmm replaced \(guest paused [\d.]+ ms\)/);
      await vm.waitFor(() => vm.pid.vmm !== vmm0 && /updated vmm/.test(vm.err), 10_000, 'a new vmm runs the guest');
      assert.match(vm.err, /updated vmm: the new build took over in [\d.]+ ms \(keeper save [\d.]+ ms; the old vmm exited cleanly\)/);
      let t = performance.now();
      await vm.waitFor(() => vm.count('@blk-progress', t) >= 3, 30_000, 'blk progress after the vmm update');

      const dd0 = vm.pid['driver-domain'];
      const vmm1 = vm.pid.vmm;
      const r2 = tsvmm(['update', 'all', '--name', name], { timeoutMs: 60_000 });
      assert.strictEqual(r2.status, 0, `${r2.stderr}\n${vm.err}`);
      assert.match(r2.stdout, /vmm replaced .*; driver-domain replaced \(handover [\d.]+ ms\); priv-domain restarting/);
      await vm.waitFor(() => vm.pid.vmm !== vmm1 && vm.pid['driver-domain'] !== dd0, 10_000, 'a new vmm and driver-domain');
      t = performance.now();
      await vm.waitFor(() => vm.count('@blk-progress', t) >= 3, 30_000, 'blk progress after updating everything');
      assert.deepStrictEqual(guestErrors(vm.out), []);
      assert.strictEqual(vm.out.match(/^@boot/gm)?.length, 1, 'the guest booted once');
      assert.match(vm.err, /updated driver-domain: the new build took over in [\d.]+ ms \(the old driver-domain exited cleanly\)/);
      assert.doesNotMatch(vm.err, /recovered (vmm|driver-domain)/, 'an update is not logged as a recovery');
      assert.deepStrictEqual(vm.recoveries.filter((r) => r.component === 'vmm' || r.component === 'driver-domain'), [], 'an update is not a crash recovery');

      const bad = tsvmm(['update', 'kernel', '--name', name]);
      assert.strictEqual(bad.status, 2);
      assert.match(bad.stderr, /^tsvmm: error: usage: tsvmm update \[vmm\|driver-domain\|priv-domain\|all\].*\n$/);
    } finally {
      await vm.stop();
      vm.cleanup();
      fs.rmSync((vm as { imgDir?: string }).imgDir!, { recursive: true, force: true });
    }
  });
});
