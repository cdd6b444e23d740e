/**
 * `tsvmm inject` faults from outside the components (issue 16): what a malicious guest writes into
 * its own rings (`ring`), the disk answering EIO (`eio`), the TAP vanishing (`tap-vanish`). Each
 * test injects into a running VM, reads back that the injector changed what it targets (the device
 * answered the bad ring, the completion became an error, the TAP is gone), and checks that only
 * the target was affected: the driver-domain was not restarted, the other vCPU's counter chain and
 * the API carried on, the VM is still running.
 */
import * as assert from 'assert';
import * as fs from 'fs';
import { inject, pidsFrom, ComponentPids, RingAttack } from '../cli/inject';
import { blkLoopVm, RunningVm } from './helpers/fault-harness';
import { requireKvm } from './helpers/tsvmm';
import { request } from '../cli/verbs';
import { vmPaths } from '../contracts/paths';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function pidsOf(vm: RunningVm, name: string): Promise<ComponentPids> {
  for (const deadline = Date.now() + 30_000; Date.now() < deadline;) {
    const p = pidsFrom(JSON.parse((await request(vmPaths(name).socket, 'GET', '/v1/vm/components')).body));
    if (p.keeper && p['driver-domain'] === vm.pid['driver-domain'] && p.vmm === vm.pid.vmm) return p;
    await sleep(100);
  }
  throw new Error(`the VM's components did not settle: ${vm.err.slice(-500)}`);
}

/** The VM carried on after a fault: not exited, the vCPU-1 counter chain moving, the API answering, the driver-domain not restarted. */
async function carriedOn(vm: RunningVm, name: string, since: number, recoveriesBefore: number): Promise<void> {
  await vm.waitFor(() => vm.count('@counter', since) >= 3, 20_000, 'the other vCPU\'s counter chain after the fault');
  const r = await request(vmPaths(name).socket, 'GET', '/v1/vm/components');
  assert.strictEqual(r.status, 200);
  assert.deepStrictEqual(vm.recoveries.slice(recoveriesBefore).map((x) => x.line), [], 'no component was restarted');
  assert.strictEqual(vm.exit, undefined);
  assert.ok(!/^@error what=counter/m.test(vm.out), 'the counter chain checked out');
}

describe('tsvmm inject: faults from outside the components', function () {
  this.timeout(180_000);
  before(requireKvm);

  it('ring: a rejected malformed request (descriptor outside RAM, a chain loop, a huge length) leaves the disk serving; avail idx jumped past the queue: only that device needs a reset', async () => {
    const name = `fi-ring-${process.pid}`;
    const vm = blkLoopVm(['--name', name, '--metrics-addr', 'none', '--cpus', '2'], { TSVMM_TEST_HOOKS: '0' }, { n: 200000, cmdline: 'ap_counter=1 n=0 report=20000000 blk_timeout=30' });
    const imgDir = (vm as unknown as { imgDir: string }).imgDir;
    try {
      await vm.waitFor(() => vm.count('@blk-progress') >= 2 && vm.pid.vmm > 0, 60_000, 'the first progress lines');
      const rec0 = vm.recoveries.length;
      let seed = 1;
      for (const attack of ['desc-oob', 'desc-loop', 'desc-huge'] as RingAttack[]) {
        const t = performance.now();
        const r = await inject('driver-domain', 'ring', await pidsOf(vm, name), { seed: seed++, ringAttack: attack });
        // Read back: the device completed the bad head (the request rejected), the queue not broken.
        assert.match(r.after!, /completed by the device.*rejected/, JSON.stringify(r));
        await vm.waitFor(() => /rejected \d+ malformed request/.test(vm.err), 10_000, 'the driver-domain logging the rejected request');
        // The disk goes on serving the guest's own requests.
        await vm.waitFor(() => vm.count('@blk-progress', t) >= 2, 20_000, `blk progress after ${attack}`);
        await carriedOn(vm, name, t, rec0);
      }
      assert.match(vm.out, /@blk-error op=reap what=bad_used_id/, 'the guest saw the completion of a head it never made available');
      const t = performance.now();
      const r = await inject('driver-domain', 'ring', await pidsOf(vm, name), { seed: 9, ringAttack: 'avail-jump' });
      assert.match(r.after!, /DEVICE_NEEDS_RESET.*queue broken/, JSON.stringify(r));
      await vm.waitFor(() => /disk 0: the guest's ring is malformed \(avail idx moved/.test(vm.err), 10_000, 'the driver-domain logging the broken ring');
      await carriedOn(vm, name, t, rec0);
    } finally {
      await vm.stop();
      vm.cleanup();
      fs.rmSync(imgDir, { recursive: true, force: true });
    }
  });
});
