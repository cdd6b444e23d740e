/**
 * Outside failures cost the least (issue 14): a --serial sink that refuses every write (/dev/full:
 * ENOSPC, as a file on a full file system) drops the guest's serial output, counts it
 * (tsvmm_serial_dropped_bytes_total), says so once, and the guest keeps running; the console log
 * (`tsvmm console`) still has every line.
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import { requireKvm, skipBecause } from './helpers/tsvmm';
import { sleep, startVm, TestVm, runScenario } from './helpers/control-plane';
import { guestErrors } from './helpers/fault-harness';

describe('a failing serial sink', function () {
  this.timeout(90_000);
  before(function () {
    requireKvm.call(this);
    if (!fs.existsSync('/dev/full')) skipBecause(this, 'no /dev/full on this host: the sink that fails with ENOSPC on every write');
  });
  let vm: TestVm | undefined;
  after(async () => {
    await vm?.stop();
    if (vm) fs.rmSync(vm.dir, { recursive: true, force: true });
  });

  it('--serial /dev/full: output dropped and counted, the guest keeps running, the console log has it all', async () => {
    await runScenario(async () => {
      vm = await startVm({ name: `resilience-serial-${process.pid}`, extra: ['--serial', '/dev/full'] });
      const v = vm;
      let consoleText = '';
      const progress = () => consoleText.split('\n').filter((l) => l.startsWith('@blk-progress')).length;
      for (let i = 0; i < 300 && progress() < 4; i++) {
        await sleep(100);
        const c = v.cli(['console', '--name', v.name, '--no-follow']);
        if (c.status === 0) consoleText = c.stdout;
      }
      assert.ok(progress() >= 4, `guest progress in the console log:\n${consoleText.slice(-500)}\n${v.err()}`);
      assert.equal(v.proc.exitCode, null, `tsvmm exited:\n${v.err()}`);
      const warned = () => v.err().split('\n').filter((l) => /the serial output failed \(ENOSPC\); dropping guest serial output/.test(l));
      for (let i = 0; i < 100 && !warned().length; i++) await sleep(100);
      const warnings = warned();
      assert.equal(warnings.length, 1, v.err());
      const m = v.cli(['metrics', '--name', v.name]);
      assert.equal(m.status, 0, m.stderr);
      const dropped = Number(/^tsvmm_serial_dropped_bytes_total(?:\{[^}]*\})? (\d+)/m.exec(m.stdout)?.[1] ?? 0);
      assert.ok(dropped > 0, m.stdout.split('\n').filter((l) => l.includes('serial')).join('\n'));
      assert.deepEqual(guestErrors(consoleText), []);
      return v;
    });
  });
});
