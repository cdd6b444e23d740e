/**
 * Serial output across vmm kills with the UART's transmit register coalesced
 * (vmm/coalesced.ts): the guest prints a line every 1000 counter steps, so it
 * is writing to the UART nearly all the time and most kills leave a THR write
 * in KVM's coalesced ring that the dead vmm had not consumed. Its keeper
 * copies the ring into the snapshot and the next vmm (cold restart and warm
 * standby) replays it from the journal's ring tag: no byte is lost (every
 * line is well formed and no counter step is missing) and none is doubled
 * inside a line. A whole line may appear twice when the vmm died between
 * writing it out and committing that (the journal's at-least-once rule for a
 * finished line, vmm/restore.ts), at most once per kill.
 */
import { strict as assert } from 'assert';
import { requireKvm } from './helpers/tsvmm';
import { ComponentName, RunningVm } from './helpers/fault-harness';

const KILLS = Number(process.env.TSVMM_SERIAL_KILLS ?? 8);
const REPORT = 1000;
const COUNTER = /^@counter cpu=0 n=(\d+) hash=[0-9a-f]{16} tsc=\d+ ok$/;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('serial output across vmm kills (coalesced UART THR)', function () {
  this.timeout(180_000);
  before(requireKvm);

  for (const standby of [false, true]) {
    it(`${KILLS} SIGKILLs of the vmm during continuous serial output (${standby ? 'warm standby' : 'cold restart'}): every byte exactly once, whole lines at least once`, async () => {
      const vm = new RunningVm([...(standby ? ['--standby'] : []), '--cpus', '1', '--cmdline', `workload=counter n=0 report=${REPORT}`], { TSVMM_RESTORE_DEBUG: '1' });
      try {
        await vm.waitFor(() => vm.count('@counter') >= 2 && vm.pid.vmm > 0, 30_000, 'the first progress lines');
        for (let k = 0; k < KILLS; k++) {
          if (standby) await vm.waitFor(() => vm.standbyPid.vmm !== 0 && vm.standbyPid.vmm !== vm.pid.vmm, 20_000, `a vmm standby before kill ${k + 1}`);
          await sleep(20 + Math.random() * 130);
          await vm.fail('vmm' as ComponentName, 'SIGKILL', '@counter');
        }
      } finally {
        await vm.stop();
      }
      assert.ok(!/KVM lacks KVM_CAP_COALESCED_PIO/.test(vm.err), 'this KVM cannot coalesce port writes: nothing to test');
      const replayed = [...vm.err.matchAll(/replayed (\d+) coalesced UART writes/g)].map((m) => Number(m[1]));
      assert.equal(replayed.length, KILLS, `one replay line per restore:\n${vm.err}`);
      let last = 0;
      let duplicates = 0;
      for (const { line } of vm.lines) {
        if (/^@(boot|smp)/.test(line) || (line === '' && last === 0)) continue; // the guest starts with an empty line
        const m = COUNTER.exec(line);
        assert.ok(m, `a lost or doubled byte: ${JSON.stringify(line)}`);
        const n = Number(m[1]);
        if (n === last) { duplicates++; continue; }
        assert.equal(n, last + REPORT, `a line is missing: ${last} -> ${n}`);
        last = n;
      }
      console.log(`      ${KILLS} kills: coalesced writes replayed per restore ${JSON.stringify(replayed)}; whole lines written twice: ${duplicates}`);
      assert.ok(replayed.some((x) => x > 0), 'no kill left a coalesced write in the ring: the path was not exercised');
      assert.ok(duplicates <= KILLS, `${duplicates} duplicate lines for ${KILLS} kills`);
      assert.equal(vm.recoveries.length, KILLS);
      if (standby) assert.equal(vm.recoveries.filter((r) => r.warm).length, KILLS, vm.err);
      vm.cleanup();
    });
  }
});
