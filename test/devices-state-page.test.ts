/**
 * Shared state page: layout, checksums, seqlock tear detection, invariants,
 * heartbeats, and in-flight order across a simulated restart (new objects
 * over the same bytes).
 */

import { strict as assert } from 'assert';
import { Worker } from 'worker_threads';
import { StatePage, StatePageError, Component, DEFAULT_GEOMETRY, HEADER_SIZE, DeviceSpec, mapDevicePage } from '../contracts/state-page';
import { CONTROL_OFFSET, DEVICE_PAGE_OFFSET, DEVICE_PAGE_SIZE, STATE_MEMFD_SIZE } from '../contracts/fds';
import { native } from '../native/kvm';

const spec = (id = 2): DeviceSpec => ({ deviceId: id, vendorId: 7, numQueues: 2, queueNumMax: 128, deviceFeatures: (1n << 32n) | (1n << 29n), config: Uint8Array.from([1, 2, 3, 4, 5]) });

function fresh(): { bytes: Uint8Array; page: StatePage } {
  const bytes = new Uint8Array(new SharedArrayBuffer(StatePage.layoutSize()));
  const page = StatePage.format(bytes);
  page.addDevice(spec(2));
  page.addDevice(spec(1));
  return { bytes, page };
}

describe('contracts/state-page', () => {
  it('the layout fits its part of the state memfd, and components map only that part', () => {
    assert.ok(StatePage.layoutSize(DEFAULT_GEOMETRY) <= DEVICE_PAGE_SIZE);
    assert.equal(DEVICE_PAGE_OFFSET + DEVICE_PAGE_SIZE, CONTROL_OFFSET);
    const fd = native.memfdCreate('tsvmm-test-state', STATE_MEMFD_SIZE);
    try {
      const whole = new Uint8Array(native.mmap(fd, STATE_MEMFD_SIZE, 0, true));
      StatePage.format(whole.subarray(DEVICE_PAGE_OFFSET, CONTROL_OFFSET));
      whole.fill(0xa5, CONTROL_OFFSET, CONTROL_OFFSET + 64); // the control page's first bytes
      const page = mapDevicePage(fd);
      assert.deepEqual(page.validate().errors, []);
      assert.equal(page.bytes.byteLength, DEVICE_PAGE_SIZE);
    } finally {
      native.close(fd);
    }
  });

  it('formats a page that validates, and attaches to it', () => {
    const { bytes, page } = fresh();
    assert.deepEqual(page.validate(), { ok: true, errors: [], tornDevices: [] });
    const again = StatePage.attach(bytes);
    assert.equal(again.numDevices, 2);
    assert.deepEqual(again.geometry, DEFAULT_GEOMETRY);
    const d = again.device(0);
    assert.equal(d.deviceId, 2);
    assert.equal(d.deviceFeatures, (1n << 32n) | (1n << 29n));
    assert.equal(d.deviceFeaturesWord(1), 1);
    assert.deepEqual([...d.config], [1, 2, 3, 4, 5]);
    assert.equal(StatePage.layoutSize() % 4096, 0);
    assert.ok(HEADER_SIZE + 8 * again.slotSize <= StatePage.layoutSize());
  });

  it('registers round-trip and are the bytes (no JS-heap copy)', () => {
    const { bytes, page } = fresh();
    const d = page.device(1);
    d.driverFeatures = (1n << 32n) | 5n;
    d.queueSel = 1;
    d.setQueueConfig(1, { num: 64, ready: true, desc: 0x1_2345_6000, driver: 0x7000, device: 0x8000 });
    d.status = 15;
    const other = StatePage.attach(bytes).device(1);
    assert.equal(other.driverFeatures, (1n << 32n) | 5n);
    assert.equal(other.queueSel, 1);
    assert.deepEqual(other.queueConfig(1), { num: 64, ready: true, desc: 0x1_2345_6000, driver: 0x7000, device: 0x8000 });
    assert.equal(other.status, 15);
    other.raiseInterrupt(1);
    assert.equal(d.interruptStatus, 1);
    d.ackInterrupt(1);
    assert.equal(other.interruptStatus, 0);
    assert.ok(page.validate().ok);
  });

  it('an ACK counts in the isr word (exactly-once replay) and the guest sees only InterruptStatus', () => {
    const { page } = fresh();
    const d = page.device(0);
    const intent = new Int32Array(1);
    d.raiseInterrupt(3);
    assert.equal(d.ackCount, 0);
    d.ackInterrupt(0xffff_fff1, intent, 0x8000_0000 | 0); // high bits written by the guest change nothing but the VRING bit
    assert.equal(d.interruptStatus, 2);
    assert.equal(d.ackCount, 1);
    assert.equal(intent[0] >>> 0, 0x8000_0000, 'the intent names the count before the ACK');
    d.raiseInterrupt(1);
    assert.equal(d.interruptStatus, 3, 'a raise leaves the count alone');
    assert.equal(d.isrWord[0] >>> 16, 1, 'isrWord is the word itself');
    for (let i = 0; i < 0x1_0000; i++) d.ackInterrupt(0);
    assert.equal(d.ackCount, 1, 'the count wraps at 2^16 without touching the status bits');
    assert.equal(d.interruptStatus, 3);
    d.resetRegisters();
    assert.equal(d.interruptStatus, 0);
    assert.equal(d.ackCount, 1, 'a reset clears the status, the count runs on');
  });

  it('the static checksum detects corruption of the header or a static block', () => {
    for (const off of [16, 24, HEADER_SIZE + 0, HEADER_SIZE + 0x40 + 2]) {
      const { bytes, page } = fresh();
      bytes[off] ^= 0x10;
      const r = page.validate();
      assert.equal(r.ok, false, `flip at ${off}`);
      assert.ok(r.errors.some((e) => /static checksum/.test(e)), r.errors.join());
    }
  });

  it('the register checksum detects corruption, the seqlock detects a torn update', () => {
    const { bytes, page } = fresh();
    const d = page.device(0);
    d.setQueueConfig(0, { num: 32, ready: true, desc: 0x1000, driver: 0x2000, device: 0x3000 });
    bytes[d.base + 0x140 + 64 + 8] ^= 1; // desc lo of queue 0
    let r = page.validate();
    assert.ok(r.errors.some((e) => /device 0: register checksum/.test(e)), r.errors.join());
    d.repairRegs();
    assert.ok(page.validate().ok);
    // a writer dies inside update(): the seqlock stays odd
    try {
      d.update(() => {
        d.queueSel = 1;
        throw new Error('killed');
      });
    } catch {
      /* the update still closes in this process; simulate the death by making it odd again */
    }
    new Uint32Array(bytes.buffer, d.base + 0x140, 1)[0] |= 1;
    r = page.validate();
    assert.deepEqual(r.tornDevices, [0]);
    assert.equal(d.queueConfig(0), undefined, 'a reader does not take a torn snapshot');
    d.repairRegs();
    assert.ok(page.validate().ok);
  });

  it('rejects a bad magic or version, and reports broken invariants', () => {
    const { bytes, page } = fresh();
    const copy = bytes.slice();
    copy[0] ^= 1;
    assert.throws(() => StatePage.attach(copy), StatePageError);
    const copy2 = bytes.slice();
    copy2[4] = 9;
    assert.throws(() => StatePage.attach(copy2), /version/);
    const p = page.device(0).progress(0);
    p.reset(16);
    p.lastAvailIdx = 40; // 40 outstanding in a queue of 16
    assert.ok(page.validate().errors.some((e) => /more than queue size/.test(e)));
    p.reset(16);
    new Uint32Array(bytes.buffer, p.base + 32 + 16 * 3, 1)[0] = 2; // inflight flag 2
    assert.ok(page.validate().errors.some((e) => /inflight flag of head 3/.test(e)));
    page.device(0).status = 0x200;
    assert.ok(page.validate().errors.some((e) => /unknown status bits/.test(e)));
  });

  it('heartbeats count per component', () => {
    const { bytes, page } = fresh();
    page.beat(Component.Vmm);
    page.beat(Component.Vmm);
    page.beat(Component.DriverDomain);
    const other = StatePage.attach(bytes);
    assert.equal(other.heartbeat(Component.Vmm), 2);
    assert.equal(other.heartbeat(Component.DriverDomain), 1);
    assert.equal(other.heartbeat(Component.PrivDomain), 0);
    assert.ok(page.validate().ok, 'heartbeats are outside the checksum');
  });

  it('in-flight order survives a restart (new objects over the same bytes)', () => {
    const { bytes, page } = fresh();
    const p = page.device(1).progress(1);
    p.reset(128);
    for (const h of [7, 3, 99, 0, 42]) p.markInflight(h);
    p.lastAvailIdx = 5;
    p.clearInflight(99);
    p.usedIdx = 1;
    const p2 = StatePage.attach(bytes).device(1).progress(1);
    assert.deepEqual(p2.inflightInOrder(), [7, 3, 0, 42]);
    assert.equal(p2.nextCounter, 6);
    assert.ok(p2.counterOf(3) < p2.counterOf(0));
    assert.ok(StatePage.attach(bytes).validate().ok);
    // counters above 2^32 keep their order
    p2.nextCounter = 2 ** 32 + 5;
    p2.markInflight(100);
    p2.markInflight(1);
    assert.deepEqual(p2.inflightInOrder(), [7, 3, 0, 42, 100, 1]);
    assert.equal(p2.counterOf(1), 2 ** 32 + 6);
  });

  it('a device reset clears registers and progress', () => {
    const { page } = fresh();
    const d = page.device(0);
    d.setQueueConfig(0, { num: 32, ready: true, desc: 0x1000, driver: 0x2000, device: 0x3000 });
    d.status = 15;
    d.progress(0).reset(32);
    d.progress(0).markInflight(4);
    d.resetRegisters();
    assert.equal(d.status, 0);
    assert.equal(d.queueConfig(0)!.num, 0);
    assert.equal(d.progress(0).queueSize, 0);
    assert.deepEqual(d.progress(0).inflightInOrder(), []);
    assert.ok(page.validate().ok);
  });

  it('works over a plain ArrayBuffer too, and refuses a page that is too small', () => {
    const bytes = new Uint8Array(StatePage.layoutSize({ maxDevices: 1, maxQueues: 1, maxQueueSize: 8 }));
    const page = StatePage.format(bytes, { maxDevices: 1, maxQueues: 1, maxQueueSize: 8 });
    page.addDevice({ ...spec(), numQueues: 1, queueNumMax: 8 });
    assert.ok(page.validate().ok);
    assert.throws(() => page.addDevice(spec()), /full/);
    assert.throws(() => StatePage.format(new Uint8Array(100)), /smaller/);
  });

  it('a check that races a live register writer in another thread is not reported as corruption', async () => {
    const { bytes, page } = fresh();
    page.sealStatic();
    // Another thread keeps updating device 0's registers (as the vmm does while the guest sets up
    // its device) through the seqlock; validation here must never call that a checksum mismatch.
    const stopFlag = new SharedArrayBuffer(4);
    const worker = new Worker(`
      const { workerData, parentPort } = require('worker_threads');
      const { StatePage } = require(workerData.mod);
      const page = StatePage.attach(workerData.bytes);
      const slot = page.device(0);
      const stop = new Int32Array(workerData.stop);
      parentPort.postMessage('go');
      for (let i = 0; Atomics.load(stop, 0) === 0; i++) slot.update(() => { slot.queueSel = i & 1; slot.deviceFeaturesSel = i & 1; });
    `, { eval: true, workerData: { bytes, mod: require.resolve('../contracts/state-page'), stop: stopFlag } });
    await new Promise((r) => worker.once('message', r));
    const mismatches: string[] = [];
    const t0 = Date.now();
    while (Date.now() - t0 < 300) {
      const e = page.device(0).validate().filter((x) => /checksum mismatch/.test(x));
      mismatches.push(...e);
    }
    // Let the writer finish its update and exit (terminate() could stop it mid-update: seqlock odd).
    const exited = new Promise((r) => worker.once('exit', r));
    Atomics.store(new Int32Array(stopFlag), 0, 1);
    await exited;
    assert.deepEqual(mismatches, []);
    // A real corruption over a stable block is still caught.
    const slot = page.device(0);
    slot.update(() => { slot.queueSel = 1; });
    bytes[page.device(0).base + 0x154 + 16] ^= 0xff; // queueSel byte, behind the seqlock's back
    assert.ok(slot.validate().includes('register checksum mismatch'));
  });
});
