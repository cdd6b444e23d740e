/**
 * The native exit loop (native/kvm/fastexit.cc) answers every virtio-mmio device's InterruptStatus
 * read and InterruptACK write (the two MMIO exits a guest in interrupt mode makes per interrupt)
 * without entering JavaScript; tsvmm_vcpu_exits_native_total counts them apart from the exits
 * JavaScript handles. TSVMM_NO_FASTEXIT=1 (bench/exits --ab) sends them to JavaScript again.
 * (Exactly-once ACKs across a vmm killed mid-exit: test/recovery-mmio-replay.test.ts.)
 */
import { strict as assert } from 'assert';
import * as fs from 'fs';
import { requireKvm } from './helpers/tsvmm';
import { metricValue, sleep, startVm, TestVm } from './helpers/control-plane';
import { guestErrors } from './helpers/fault-harness';

describe('native exit loop: virtio InterruptStatus / InterruptACK', function () {
  this.timeout(120_000);
  before(requireKvm);
  let vm: TestVm | undefined;
  afterEach(async () => {
    await vm?.stop();
    if (vm) fs.rmSync(vm.dir, { recursive: true, force: true });
    vm = undefined;
  });

  async function exits(env: NodeJS.ProcessEnv): Promise<{ mmio: number; nativeMmio: number; nativeIo: number; out: string }> {
    vm = await startVm({ env });
    const t0 = Date.now();
    while (vm.progress() < 4 && Date.now() - t0 < 60_000) await sleep(50);
    assert.ok(vm.progress() >= 4, `no blk progress in interrupt mode\n${vm.err()}`);
    const r = vm.cli(['metrics']);
    assert.equal(r.status, 0, r.stderr);
    return {
      mmio: metricValue(r.stdout, 'tsvmm_vcpu_exits_total', { reason: 'mmio' }),
      nativeMmio: metricValue(r.stdout, 'tsvmm_vcpu_exits_native_total', { reason: 'mmio' }),
      nativeIo: metricValue(r.stdout, 'tsvmm_vcpu_exits_native_total', { reason: 'io' }),
      out: vm.out(),
    };
  }

  it('a guest in interrupt mode: its interrupt-status reads and ACKs are answered natively', async () => {
    const e = await exits({});
    assert.deepEqual(guestErrors(e.out), []);
    // Two MMIO exits per interrupt, answered in C; JavaScript sees only the device's set-up
    // (feature negotiation, queue registers: a fixed few dozen), however long the workload runs.
    assert.ok(e.nativeMmio > 0, `no MMIO exit answered natively: ${JSON.stringify(e)}`);
    assert.ok(e.mmio - e.nativeMmio < e.nativeMmio, `JavaScript handled ${e.mmio - e.nativeMmio} of ${e.mmio} MMIO exits`);
    assert.ok(e.nativeIo > 0, 'the fixed ports (the UART LSR) are answered natively too');
  });

  it('TSVMM_NO_FASTEXIT=1: every exit goes to JavaScript, and the guest runs the same', async () => {
    const e = await exits({ TSVMM_NO_FASTEXIT: '1' });
    assert.deepEqual(guestErrors(e.out), []);
    assert.ok(e.mmio > 0);
    assert.equal(e.nativeMmio, 0);
    assert.equal(e.nativeIo, 0);
  });
});
