/**
 * The vmm killed in the middle of handling each kind of guest MMIO write
 * (issue 4 item 6). A test hook (TSVMM_TEST_HOOKS=1, TSVMM_TEST_DIE_MMIO,
 * vmm/vcpu-thread.ts) SIGKILLs the first vmm while its vCPU thread handles the
 * Nth write to one virtio-mmio register during the guest's virtio-blk driver
 * init: after the device model applied it ("after": the replay applies it a
 * second time) or before ("before": only the replay applies it), and always
 * before the exit is marked handled. The keeper records the write, the next
 * vmm replays it, and the guest's verifying blk workload must then run with
 * zero errors: the device ended in exactly the state the guest wrote.
 *
 * InterruptACK is answered in the native exit loop (native/kvm/fastexit.cc, which has the same hook)
 * unless TSVMM_NO_FASTEXIT=1; either way the ACK count it moves is in the journal first, so an ACK
 * the dead vmm applied is not applied again (a second ACK would clear an interrupt the
 * driver-domain raised in between), and one it did not apply is: "before" in the native loop dies
 * with the journal's ack intent stored and the compare-and-swap not made.
 */
import { strict as assert } from 'assert';
import { requireKvm } from './helpers/tsvmm';
import { blkLoopVm, guestErrors } from './helpers/fault-harness';
import { MmioReg } from '../contracts/virtio-mmio-layout';

/** register, which write to it (1-based, during init unless noted), when to die, extra environment. */
const CASES: [keyof typeof MmioReg, number, 'before' | 'after', Record<string, string>?][] = [
  ['Status', 1, 'after'], // reset (0)
  ['Status', 3, 'before'], // ACK | DRIVER
  ['Status', 4, 'after'], // FEATURES_OK: the replay must not lose it
  ['Status', 5, 'after'], // DRIVER_OK
  ['DeviceFeaturesSel', 2, 'after'],
  ['DriverFeaturesSel', 2, 'before'],
  ['DriverFeatures', 2, 'after'],
  ['QueueSel', 1, 'after'],
  ['QueueNum', 1, 'after'],
  ['QueueDescLow', 1, 'before'],
  ['QueueDescHigh', 1, 'after'],
  ['QueueDriverLow', 1, 'after'],
  ['QueueDeviceLow', 1, 'before'],
  ['QueueReady', 1, 'after'],
  ['InterruptACK', 3, 'after'], // a completion interrupt's ACK, once the workload runs (native loop)
  ['InterruptACK', 3, 'before'],
  ['InterruptACK', 3, 'after', { TSVMM_NO_FASTEXIT: '1' }], // the same in JavaScript
  ['InterruptACK', 3, 'before', { TSVMM_NO_FASTEXIT: '1' }],
];

describe('vmm killed in the middle of an MMIO write: the write is replayed exactly once', function () {
  this.timeout(60_000);
  before(requireKvm);

  for (const [reg, nth, when, env] of CASES) {
    const ack = reg === 'InterruptACK';
    const native = ack && !env?.TSVMM_NO_FASTEXIT;
    it(`${reg} write #${nth}, killed ${when} the device model applied it${ack ? (native ? ' (native exit loop)' : ' (JavaScript)') : ''}`, async () => {
      const off = MmioReg[reg];
      const vm = blkLoopVm([], { TSVMM_TEST_DIE_MMIO: `${off}:${nth}:${when}`, TSVMM_RESTORE_DEBUG: '1', ...env }, { n: 256, report: 64 });
      try {
        await vm.waitFor(() => vm.recoveries.length === 1, 30_000, 'the vmm to die at the hook and be recovered');
        await vm.waitFor(() => vm.count('@blk-progress') >= 3, 30_000, 'blk progress after the recovery');
      } finally {
        await vm.stop();
      }
      assert.match(vm.err, new RegExp(`test hook: dying in the middle of MMIO write #${nth} to 0x[0-9a-f]*${off.toString(16).padStart(3, '0')} `), vm.err);
      // The keeper found the write unhandled and the new vmm replayed it (pending=3: TSVMM_PENDING_MMIO_WRITE).
      const restore = vm.err.split('\n').filter((l) => l.includes('restore gen'));
      assert.equal(restore.length, 1, vm.err);
      assert.match(restore[0], new RegExp(`pending=3 .*replay addr=0x[0-9a-f]*${off.toString(16).padStart(3, '0')} size=4`), restore[0]);
      assert.deepEqual(guestErrors(vm.out), []);
      assert.equal(vm.recoveries.length, 1, vm.err);
      if (ack) {
        assert.equal(/dying in the middle of MMIO write .* in the native exit loop\)/.test(vm.err), native, vm.err);
        // Applied before the kill: not applied again; not applied: applied by the replay.
        const replayed = vm.err.split('\n').filter((l) => /replayed MMIO write/.test(l));
        assert.equal(replayed.length, 1, vm.err);
        assert.equal(/not replayed/.test(replayed[0]), when === 'after', replayed[0]);
      }
      vm.cleanup();
    });
  }
});
