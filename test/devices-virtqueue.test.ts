/**
 * Split virtqueue: well-formed chains, malicious chains (each fails its
 * request or breaks the queue per the spec, and the next good request is
 * served), EVENT_IDX suppression, and in-flight recovery across a restart.
 */

import { strict as assert } from 'assert';
import { makeTestBed, TestBed } from '../virtio/testbed';
import { Virtqueue, PopResult, QUEUE_BROKEN, ChainSegments, segmentViews } from '../virtio/virtqueue';
import { DeviceSpec, StatePage } from '../contracts/state-page';
import { GuestMemory, hostRegion } from '../contracts/memory';
import {
  features, Status, VIRTIO_F_VERSION_1, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_INDIRECT, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_USED_F_NO_NOTIFY,
} from '../contracts/virtio-mmio-layout';

const ALL = features(VIRTIO_F_VERSION_1, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_INDIRECT_DESC);
const spec = (): DeviceSpec => ({ deviceId: 2, vendorId: 1, numQueues: 1, queueNumMax: 16, deviceFeatures: ALL, config: new Uint8Array(8) });

function bed(acked: bigint = ALL): { tb: TestBed; vq: Virtqueue } {
  const tb = makeTestBed(spec(), { acked });
  const vq = new Virtqueue(tb.mem, tb.slot, 0);
  const r = vq.activate();
  assert.ok(r.ok);
  return { tb, vq };
}

function expectChain(r: PopResult) {
  assert.equal(r.kind, 'chain', JSON.stringify(r));
  if (r.kind !== 'chain') throw new Error('unreachable');
  return r.chain;
}
function expectBad(r: PopResult, re: RegExp): number {
  assert.equal(r.kind, 'bad-chain', JSON.stringify(r));
  if (r.kind !== 'bad-chain') throw new Error('unreachable');
  assert.match(r.error, re);
  return r.head;
}

/** Publish a good 2-segment chain and check the device gets exactly those views, then complete it. */
function serveGood(tb: TestBed, vq: Virtqueue): void {
  const d = tb.drivers[0];
  const a = tb.dataBase;
  tb.ram.set([1, 2, 3, 4], a);
  const head = d.addChain([{ addr: a, len: 4 }, { addr: a + 100, len: 8, write: true }]);
  d.publish(head);
  const c = expectChain(vq.pop());
  assert.equal(c.head, head);
  assert.deepEqual([...c.readable[0]], [1, 2, 3, 4]);
  c.writable[0].fill(7);
  assert.equal(tb.ram[a + 100], 7, 'writable view is zero-copy');
  assert.ok(vq.push(head, 8));
  const used = d.takeUsed();
  assert.deepEqual(used[used.length - 1], { id: head, len: 8 });
  assert.equal(vq.progress.isInflight(head), false);
}

describe('virtio/virtqueue', () => {
  it('pops a chain, tracks it in flight, and pushes used', () => {
    const { tb, vq } = bed();
    const d = tb.drivers[0];
    assert.equal(vq.pop().kind, 'empty');
    const head = d.addChain([{ addr: tb.dataBase, len: 16 }, { addr: tb.dataBase + 16, len: 32 }, { addr: tb.dataBase + 64, len: 1, write: true }]);
    d.publish(head);
    const c = expectChain(vq.pop());
    assert.equal(c.readableLength, 48);
    assert.equal(c.writableLength, 1);
    assert.equal(vq.progress.isInflight(head), true);
    assert.equal(vq.progress.lastAvailIdx, 1);
    assert.equal(vq.pop().kind, 'empty');
    assert.ok(vq.push(head, 1));
    assert.equal(d.usedIdx(), 1);
    assert.equal(vq.progress.usedIdx, 1);
    assert.equal(vq.push(head, 1), false, 'a head cannot complete twice');
  });

  it('indirect chains are walked', () => {
    const { tb, vq } = bed();
    const d = tb.drivers[0];
    const table = tb.dataBase + 0x8000;
    const head = d.addIndirectChain(table, [{ addr: tb.dataBase, len: 16 }, { addr: tb.dataBase + 512, len: 512, write: true }, { addr: tb.dataBase + 2048, len: 1, write: true }]);
    d.publish(head);
    const c = expectChain(vq.pop());
    assert.equal(c.readableLength, 16);
    assert.equal(c.writableLength, 513);
  });

  describe('malicious chains fail their request and the next one is served', () => {
    it('a descriptor loop', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      const [a, b] = d.alloc(2);
      d.writeDesc(d.ring.desc, a, tb.dataBase, 8, VIRTQ_DESC_F_NEXT, b);
      d.writeDesc(d.ring.desc, b, tb.dataBase, 8, VIRTQ_DESC_F_NEXT, a);
      d.publish(a);
      const h = expectBad(vq.pop(), /loop/);
      assert.ok(vq.push(h, 0));
      serveGood(tb, vq);
    });

    it('a self-loop inside an indirect table', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      const table = tb.dataBase + 0x8000;
      d.writeDesc(table, 0, tb.dataBase, 8, VIRTQ_DESC_F_NEXT, 0);
      const [head] = d.alloc(1);
      d.writeDesc(d.ring.desc, head, table, 16, VIRTQ_DESC_F_INDIRECT, 0);
      d.publish(head);
      vq.push(expectBad(vq.pop(), /loop/), 0);
      serveGood(tb, vq);
    });

    it('a descriptor past the end of guest RAM', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      const head = d.addChain([{ addr: tb.dataBase, len: 16 }, { addr: tb.ram.length - 8, len: 16, write: true }]);
      d.publish(head);
      vq.push(expectBad(vq.pop(), /outside guest RAM/), 0);
      const head2 = d.addChain([{ addr: 2 ** 40, len: 16 }]);
      d.publish(head2);
      vq.push(expectBad(vq.pop(), /outside guest RAM/), 0);
      serveGood(tb, vq);
    });

    it('a 4 GiB length', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      const head = d.addChain([{ addr: tb.dataBase, len: 0xffffffff, write: true }]);
      d.publish(head);
      vq.push(expectBad(vq.pop(), /exceeds|outside/), 0);
      serveGood(tb, vq);
    });

    it('an indirect table inside an indirect table', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      const outer = tb.dataBase + 0x8000;
      const inner = tb.dataBase + 0x9000;
      d.writeDesc(inner, 0, tb.dataBase, 8, 0, 0);
      d.writeDesc(outer, 0, inner, 16, VIRTQ_DESC_F_INDIRECT, 0);
      const [head] = d.alloc(1);
      d.writeDesc(d.ring.desc, head, outer, 16, VIRTQ_DESC_F_INDIRECT, 0);
      d.publish(head);
      vq.push(expectBad(vq.pop(), /inside an indirect/), 0);
      serveGood(tb, vq);
    });

    it('bad indirect tables: length not a multiple of 16, zero, too large, with NEXT, without the feature', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      const table = tb.dataBase + 0x8000;
      for (const [len, flags] of [[24, 0], [0, 0], [16 * 2048, 0], [16, VIRTQ_DESC_F_NEXT]] as const) {
        const [head] = d.alloc(1);
        d.writeDesc(d.ring.desc, head, table, len, VIRTQ_DESC_F_INDIRECT | flags, 0);
        d.publish(head);
        vq.push(expectBad(vq.pop(), /indirect/), 0);
      }
      serveGood(tb, vq);
      const noInd = bed(features(VIRTIO_F_VERSION_1));
      const h = noInd.tb.drivers[0].addIndirectChain(noInd.tb.dataBase + 0x8000, [{ addr: noInd.tb.dataBase, len: 4 }]);
      noInd.tb.drivers[0].publish(h);
      noInd.vq.push(expectBad(noInd.vq.pop(), /INDIRECT_DESC/), 0);
      serveGood(noInd.tb, noInd.vq);
    });

    it('an indirect table past the end of RAM, and a next index out of range inside it', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      let [head] = d.alloc(1);
      d.writeDesc(d.ring.desc, head, tb.ram.length - 16, 32, VIRTQ_DESC_F_INDIRECT, 0);
      d.publish(head);
      vq.push(expectBad(vq.pop(), /outside guest RAM/), 0);
      const table = tb.dataBase + 0x8000;
      d.writeDesc(table, 0, tb.dataBase, 8, VIRTQ_DESC_F_NEXT, 5);
      [head] = d.alloc(1);
      d.writeDesc(d.ring.desc, head, table, 32, VIRTQ_DESC_F_INDIRECT, 0);
      d.publish(head);
      vq.push(expectBad(vq.pop(), /index 5 >= table size 2/), 0);
      serveGood(tb, vq);
    });

    it('a readable descriptor after a writable one', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      const head = d.addChain([{ addr: tb.dataBase, len: 8, write: true }, { addr: tb.dataBase + 8, len: 8 }]);
      d.publish(head);
      const r = vq.pop();
      assert.equal(r.kind, 'bad-chain');
      if (r.kind === 'bad-chain') assert.equal(r.writable.length, 1, 'writable views validated before the fault come back');
      vq.push((r as { head: number }).head, 0);
      serveGood(tb, vq);
    });

    it('an avail idx that jumps more than the queue size sets NEEDS_RESET; after a reset the next request is served', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      d.setAvailIdx(d.ring.size + 1);
      const r = vq.pop();
      assert.equal(r.kind, 'broken');
      assert.ok(tb.slot.status & Status.DEVICE_NEEDS_RESET);
      assert.ok(tb.slot.interruptStatus & 2, 'config change interrupt raised');
      assert.ok(vq.progress.flags & QUEUE_BROKEN);
      assert.equal(vq.pop().kind, 'broken', 'stays broken');
      assert.equal(vq.hasAvailable(), false);
      // the guest resets the device (the vmm clears registers and progress) and sets it up again
      tb.slot.resetRegisters();
      tb.ram.fill(0, d.ring.desc, d.ring.used + 6 + 8 * d.ring.size);
      const d2 = new (d.constructor as typeof import('../virtio/virtqueue-driver').SplitRingDriver)(tb.mem, d.ring);
      tb.drivers[0] = d2;
      d2.configure(tb.slot, 0);
      tb.slot.driverFeatures = ALL;
      tb.slot.status = Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK;
      const vq2 = new Virtqueue(tb.mem, tb.slot, 0);
      assert.ok(vq2.activate().ok);
      serveGood(tb, vq2);
    });

    it('a head out of range, or already in flight, breaks the queue', () => {
      let { tb, vq } = bed();
      tb.mem.view(tb.drivers[0].ring.avail + 4, 2).setUint16(0, 99, true);
      tb.drivers[0].setAvailIdx(1);
      assert.equal(vq.pop().kind, 'broken');
      ({ tb, vq } = bed());
      const d = tb.drivers[0];
      const head = d.addChain([{ addr: tb.dataBase, len: 8 }]);
      d.publish(head);
      d.publish(head);
      expectChain(vq.pop());
      assert.equal(vq.pop().kind, 'broken');
    });

    it('bad ring addresses fail activation with NEEDS_RESET', () => {
      const tb = makeTestBed(spec());
      tb.slot.setQueueConfig(0, { num: 16, ready: true, desc: tb.ram.length - 64, driver: 0x2000, device: 0x3000 });
      const r = new Virtqueue(tb.mem, tb.slot, 0).activate();
      assert.equal(r.ok, false);
      assert.ok(tb.slot.needsReset);
      const tb2 = makeTestBed(spec());
      tb2.slot.setQueueConfig(0, { num: 12, ready: true, desc: 0x1000, driver: 0x2000, device: 0x3000 });
      assert.equal(new Virtqueue(tb2.mem, tb2.slot, 0).activate().ok, false, 'size not a power of 2');
    });
  });

  it('random garbage descriptor tables never throw; every popped head is completed', () => {
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    for (let round = 0; round < 50; round++) {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      for (let it = 0; it < 40; it++) {
        for (let i = 0; i < 16; i++) {
          const addr = [tb.dataBase + rnd(4096), tb.ram.length - rnd(64), rnd(2 ** 32) * 2 ** rnd(24)][rnd(3)];
          const len = [rnd(64), 0xffffffff, 16 * rnd(4), rnd(2 ** 32)][rnd(4)];
          d.writeDesc(d.ring.desc, i, addr, len, rnd(8), rnd(20));
        }
        d.publish(rnd(16));
        const r = vq.pop();
        if (r.kind === 'broken') break;
        if (r.kind === 'chain' || r.kind === 'bad-chain') {
          const head = r.kind === 'chain' ? r.chain.head : r.head;
          assert.ok(vq.push(head, 0));
        }
      }
    }
  });

  it('popSegments validates exactly as pop: same verdicts, errors and bytes on random garbage and on every malicious shape', () => {
    let seed = 777;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    const kinds: Record<string, number> = {};
    for (let round = 0; round < 50; round++) {
      // Two queues over two copies of the same guest, fed the same descriptors: one pops views, one segments.
      const a = bed();
      const b = bed();
      const segs = new ChainSegments();
      for (let it = 0; it < 40; it++) {
        for (let i = 0; i < 16; i++) {
          const addr = [a.tb.dataBase + rnd(4096), a.tb.ram.length - rnd(64), rnd(2 ** 32) * 2 ** rnd(24)][rnd(3)];
          const len = [rnd(64), 0xffffffff, 16 * rnd(4), rnd(2 ** 32)][rnd(4)];
          const flags = rnd(8);
          const next = rnd(20);
          a.tb.drivers[0].writeDesc(a.tb.drivers[0].ring.desc, i, addr, len, flags, next);
          b.tb.drivers[0].writeDesc(b.tb.drivers[0].ring.desc, i, addr, len, flags, next);
        }
        const head = rnd(16);
        a.tb.drivers[0].publish(head);
        b.tb.drivers[0].publish(head);
        const r = a.vq.pop();
        const k = b.vq.popSegments(segs);
        assert.equal(k, r.kind);
        kinds[k] = (kinds[k] ?? 0) + 1;
        if (r.kind === 'broken') {
          assert.equal(segs.error, r.error);
          break;
        }
        if (r.kind === 'bad-chain') {
          assert.equal(segs.error, r.error);
          assert.equal(segs.head, r.head);
        }
        if (r.kind === 'chain') {
          const c = r.chain;
          assert.equal(segs.head, c.head);
          assert.equal(segs.readableLength, c.readableLength);
          assert.equal(segs.writableLength, c.writableLength);
          const same = (x: Uint8Array[], y: Uint8Array[]) => assert.deepEqual(x.map((v) => [...v]), y.map((v) => [...v]));
          same(segmentViews(b.tb.mem, segs, 0, segs.firstWritable), c.readable);
          same(segmentViews(b.tb.mem, segs, segs.firstWritable, segs.count), c.writable);
        }
        if (r.kind !== 'empty') {
          const h = r.kind === 'chain' ? r.chain.head : r.head;
          assert.ok(a.vq.push(h, 0));
          assert.ok(b.vq.push(h, 0));
        }
      }
    }
    assert.ok(kinds.chain > 0 && kinds['bad-chain'] > 0, `both verdicts exercised: ${JSON.stringify(kinds)}`);
  });

  it('popSegments takes a chain longer than its arrays hold (grows them, keeping the first segments)', () => {
    const { tb, vq } = bed();
    const d = tb.drivers[0];
    const n = 40; // more than ChainSegments' initial 16
    const bufs = Array.from({ length: n }, (_, i) => ({ addr: tb.dataBase + 64 * i, len: 8 + i }));
    bufs.forEach((b, i) => tb.ram.fill(i + 1, b.addr, b.addr + b.len));
    d.publish(d.addIndirectChain(tb.dataBase + 0x10000, bufs));
    const s = new ChainSegments();
    assert.equal(vq.popSegments(s), 'chain');
    assert.equal(s.count, n);
    assert.equal(s.readableLength, bufs.reduce((t, b) => t + b.len, 0));
    assert.deepEqual(segmentViews(tb.mem, s, 0, s.count).map((v) => [...v]), bufs.map((b, i) => Array(b.len).fill(i + 1)));
  });

  it('segmentViews skips a prefix across segments (the virtio-net header)', () => {
    const { tb, vq } = bed();
    const d = tb.drivers[0];
    tb.ram.set([1, 2, 3, 4, 5, 6, 7, 8], tb.dataBase);
    const head = d.addChain([{ addr: tb.dataBase, len: 3 }, { addr: tb.dataBase + 3, len: 0 }, { addr: tb.dataBase + 3, len: 5 }]);
    d.publish(head);
    const s = new ChainSegments();
    assert.equal(vq.popSegments(s), 'chain');
    assert.equal(s.count, 2, 'the empty descriptor is skipped');
    assert.deepEqual(segmentViews(tb.mem, s, 0, s.count, 4).map((v) => [...v]), [[5, 6, 7, 8]]);
    assert.deepEqual(segmentViews(tb.mem, s, 0, s.count, 2).map((v) => [...v]), [[3], [4, 5, 6, 7, 8]]);
  });

  describe('notification suppression', () => {
    it('EVENT_IDX: interrupts only when used idx passes used_event; avail_event follows last_avail_idx', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      const heads: number[] = [];
      for (let i = 0; i < 4; i++) {
        const h = d.addChain([{ addr: tb.dataBase + 64 * i, len: 8, write: true }]);
        d.publish(h);
        heads.push(h);
      }
      for (let i = 0; i < 4; i++) expectChain(vq.pop());
      assert.equal(d.availEvent(), 4);
      d.setUsedEvent(2); // interrupt me once the 3rd used entry (index 2) is published
      vq.push(heads[0], 8);
      assert.equal(vq.needsNotify(), true, 'first decision always notifies');
      vq.push(heads[1], 8);
      assert.equal(vq.needsNotify(), false, 'used idx 2 has not passed used_event 2');
      vq.push(heads[2], 8);
      assert.equal(vq.needsNotify(), true, 'used idx 3 passed used_event 2');
      assert.equal(vq.needsNotify(), false, 'nothing new');
      vq.push(heads[3], 8);
      assert.equal(vq.needsNotify(), false, 'used_event still 2');
      assert.equal(vq.enableNotify(), false);
      const h = d.addChain([{ addr: tb.dataBase, len: 8, write: true }]);
      d.publish(h);
      assert.equal(vq.enableNotify(), true, 'a buffer arrived: drain again');
    });

    it('without EVENT_IDX: NO_INTERRUPT in avail flags, NO_NOTIFY in used flags', () => {
      const { tb, vq } = bed(features(VIRTIO_F_VERSION_1));
      const d = tb.drivers[0];
      vq.disableNotify();
      assert.equal(d.usedFlags(), VIRTQ_USED_F_NO_NOTIFY);
      assert.equal(vq.enableNotify(), false);
      assert.equal(d.usedFlags(), 0);
      const h1 = d.addChain([{ addr: tb.dataBase, len: 8, write: true }]);
      d.publish(h1);
      expectChain(vq.pop());
      vq.push(h1, 0);
      assert.equal(vq.needsNotify(), true);
      d.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
      const h2 = d.addChain([{ addr: tb.dataBase, len: 8, write: true }]);
      d.publish(h2);
      expectChain(vq.pop());
      vq.push(h2, 0);
      assert.equal(vq.needsNotify(), false);
    });
  });

  describe('recovery', () => {
    /** A new process: new StatePage/Virtqueue objects over the same page bytes and RAM. */
    function restart(tb: TestBed, check = true): Virtqueue {
      const page = StatePage.attach(tb.pageBytes);
      if (check) assert.deepEqual(page.validate().errors, []);
      return new Virtqueue(new GuestMemory([hostRegion(0, tb.ram)]), page.device(0), 0);
    }

    it('resubmits in-flight heads in submit order and does not pop them again', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      const heads: number[] = [];
      for (let i = 0; i < 5; i++) {
        const h = d.addChain([{ addr: tb.dataBase + 64 * i, len: 8, write: true }]);
        d.publish(h);
        heads.push(h);
      }
      const popped = [0, 1, 2, 3].map(() => expectChain(vq.pop()).head);
      assert.deepEqual(popped, heads.slice(0, 4));
      vq.push(heads[1], 8);
      const vq2 = restart(tb);
      const r = vq2.activate();
      assert.ok(r.ok && r.recovered);
      if (!r.ok) return;
      assert.deepEqual(r.resubmit, [heads[0], heads[2], heads[3]]);
      assert.deepEqual(expectChain(vq2.chainAt(heads[2])).writable[0], tb.ram.subarray(tb.dataBase + 128, tb.dataBase + 136));
      assert.equal(expectChain(vq2.pop()).head, heads[4], 'the next pop is the one never popped');
      assert.equal(vq2.pop().kind, 'empty');
      for (const h of [heads[3], heads[0], heads[2], heads[4]]) assert.ok(vq2.push(h, 8));
      assert.deepEqual(d.takeUsed().map((u) => u.id), [heads[1], heads[3], heads[0], heads[2], heads[4]]);
      const c5 = d.addChain([{ addr: tb.dataBase, len: 8, write: true }]);
      d.publish(c5);
      const c = expectChain(vq2.pop());
      assert.ok(vq2.progress.counterOf(c.head) > vq2.progress.counterOf(heads[4]) || !vq2.progress.isInflight(heads[4]));
    });

    it('reconciles the last batch: used idx published but in-flight not yet cleared', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      const h0 = d.addChain([{ addr: tb.dataBase, len: 8, write: true }]);
      const h1 = d.addChain([{ addr: tb.dataBase + 64, len: 8, write: true }]);
      d.publish(h0);
      d.publish(h1);
      expectChain(vq.pop());
      expectChain(vq.pop());
      // the old process died right after publishing used->idx for h1: do push's first half by hand
      vq.progress.lastBatchHead = h1;
      tb.mem.view(d.ring.used + 4, 8).setUint32(0, h1, true);
      tb.mem.view(d.ring.used + 4, 8).setUint32(4, 8, true);
      tb.mem.view(d.ring.used, 4).setUint16(2, 1, true);
      const vq2 = restart(tb);
      const r = vq2.activate();
      assert.ok(r.ok);
      if (r.ok) assert.deepEqual(r.resubmit, [h0], 'h1 was already completed');
      assert.equal(vq2.progress.usedIdx, 1);
      assert.equal(vq2.progress.lastAvailIdx, 2);
      assert.ok(vq2.push(h0, 8));
      assert.deepEqual(d.takeUsed().map((u) => u.id), [h1, h0]);
    });

    it('a crash between marking in flight and advancing last_avail_idx resubmits without a duplicate pop', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      const h0 = d.addChain([{ addr: tb.dataBase, len: 8, write: true }]);
      d.publish(h0);
      vq.progress.markInflight(h0); // pop's first half
      const vq2 = restart(tb);
      const r = vq2.activate();
      assert.ok(r.ok);
      if (r.ok) assert.deepEqual(r.resubmit, [h0]);
      assert.equal(vq2.pop().kind, 'empty');
    });

    it('a corrupted progress record breaks the queue instead of replaying garbage', () => {
      const { tb, vq } = bed();
      const d = tb.drivers[0];
      const h0 = d.addChain([{ addr: tb.dataBase, len: 8, write: true }]);
      d.publish(h0);
      expectChain(vq.pop());
      vq.progress.lastAvailIdx = 40; // 40 outstanding in a 16-entry queue
      const r = restart(tb, false).activate();
      assert.equal(r.ok, false);
      assert.ok(tb.slot.needsReset);
    });
  });
});
