/**
 * Warm standby (issue 4 item 4, `tsvmm run --standby`): a pre-started vmm
 * and driver-domain take over the moment the primary dies. Repeated SIGKILLs
 * of each, under the counter and the verifying blk-loop workloads: zero
 * guest-visible errors, and every recovery line shows the warm path.
 */
import { strict as assert } from 'assert';
import * as path from 'path';
import { requireKvm } from './helpers/tsvmm';
import { blkLoopVm, ComponentName, guestErrors, RunningVm } from './helpers/fault-harness';
import { checkImage } from './helpers/blk-image';
import { percentile } from './helpers/kill-harness';

const KILLS = Number(process.env.TSVMM_STANDBY_KILLS ?? 15);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Kills `component` KILLS times, each time once a standby is ready; returns per-kill supervisor ms. */
async function killWarm(vm: RunningVm, component: ComponentName, progress: string): Promise<number[]> {
  const ms: number[] = [];
  for (let k = 0; k < KILLS; k++) {
    await vm.waitFor(() => vm.standbyPid[component] !== 0 && vm.standbyPid[component] !== vm.pid[component], 20_000, `a ${component} standby before kill ${k + 1}`);
    await sleep(30 + Math.random() * 150);
    const r = await vm.fail(component, 'SIGKILL', progress);
    assert.ok(r.rec.warm, `kill ${k + 1}: not the warm path: ${r.rec.line}\n--- tsvmm stderr, last lines ---\n${vm.err.split('\n').slice(-25).join('\n')}`);
    ms.push(r.rec.ms);
  }
  return ms;
}

describe('warm standby (--standby)', function () {
  this.timeout(240_000);
  before(requireKvm);

  for (const cpus of [1, 2]) {
    it(`counter on ${cpus} vCPU${cpus > 1 ? 's' : ''}: ${KILLS} SIGKILLs of the vmm, each taken over by the standby, counter exact`, async () => {
      const vm = new RunningVm(['--standby', '--cpus', String(cpus), '--cmdline', `workload=counter n=0 report=${cpus === 1 ? 5_000_000 : 10_000_000}`]);
      let ms: number[] = [];
      try {
        await vm.waitFor(() => vm.count('@counter') >= 2 && vm.pid.vmm > 0, 30_000, 'the first progress lines');
        ms = await killWarm(vm, 'vmm', '@counter');
      } finally {
        await vm.stop();
      }
      console.log(`      supervisor death -> resumed: p50 ${percentile(ms, 50).toFixed(2)} ms, max ${Math.max(...ms).toFixed(2)} ms`);
      const last: number[] = [];
      // Whole lines: the VM stopped at the end may have been in the middle of one.
      for (const l of vm.out.slice(0, vm.out.lastIndexOf('\n') + 1).split('\n')) {
        if (!l.startsWith('@')) continue;
        assert.ok(!l.startsWith('@error'), l);
        const m = /^@counter cpu=(\d+) n=(\d+) hash=[0-9a-f]{16} tsc=\d+ ok$/.exec(l);
        if (!m) { assert.match(l, /^@(boot|smp)/); continue; }
        const cpu = Number(m[1]);
        const n = Number(m[2]);
        assert.ok(n >= (last[cpu] ?? 0), `cpu ${cpu} went backwards: ${last[cpu]} -> ${n}`);
        last[cpu] = n;
      }
      assert.equal(last.filter((x) => x > 0).length, cpus, 'every vCPU made progress');
      assert.equal(vm.recoveries.filter((r) => r.warm).length, KILLS, vm.err);
      vm.cleanup();
    });
  }

  for (const component of ['vmm', 'driver-domain'] as ComponentName[]) {
    it(`blk-loop: ${KILLS} SIGKILLs of the ${component}, each taken over by the standby, zero verification errors`, async () => {
      const vm = blkLoopVm(['--standby']);
      let ms: number[] = [];
      try {
        await vm.waitFor(() => vm.count('@blk-progress') >= 2 && vm.pid.vmm > 0 && vm.pid['driver-domain'] > 0, 30_000, 'the first progress lines');
        ms = await killWarm(vm, component, '@blk-progress');
        const p = vm.count('@blk-progress');
        await vm.waitFor(() => vm.count('@blk-progress') >= p + 2, 15_000, 'progress after the last kill');
      } finally {
        await vm.stop();
      }
      console.log(`      ${component} death -> serving/resumed: p50 ${percentile(ms, 50).toFixed(2)} ms, max ${Math.max(...ms).toFixed(2)} ms`);
      assert.deepEqual(guestErrors(vm.out), []);
      assert.equal(vm.recoveries.filter((r) => r.component === component && r.warm).length, KILLS, vm.err);
      const check = checkImage(path.join((vm as unknown as { imgDir: string }).imgDir, 'disk.img'), { bs: 4096, count: 1000 });
      assert.equal(check.errorCount, 0, check.errors.slice(0, 5).join('\n'));
      vm.cleanup();
    });
  }
});
