/**
 * virtio-net: TX hands the frame (without the virtio_net_hdr) to the TAP,
 * RX fills a guest buffer with header + frame, the backlog waits for
 * buffers, undersized buffers drop the frame, and recovery re-sends TX and
 * reuses RX buffers.
 */

import { strict as assert } from 'assert';
import { makeTestBed, TestBed } from '../virtio/testbed';
import { VirtioNet, NetBackend, netDeviceSpec, parseMac, NET_HDR_SIZE, RX_QUEUE, TX_QUEUE } from '../virtio/virtio-net';
import { StatePage } from '../contracts/state-page';
import { GuestMemory, hostRegion } from '../contracts/memory';
import { iovLength } from '../virtio/iov';

class FakeTap implements NetBackend {
  sent: Uint8Array[] = [];
  segments: number[] = [];
  cb?: (f: Uint8Array) => void;
  write(frame: Uint8Array[]): void {
    this.segments.push(frame.length);
    this.sent.push(new Uint8Array(Buffer.concat(frame)));
  }
  onFrame(cb: (f: Uint8Array) => void): void {
    this.cb = cb;
  }
}

const MAC = parseMac('52:54:00:12:34:56');

function rig(): { tb: TestBed; net: VirtioNet; tap: FakeTap; notes: number[] } {
  const tb = makeTestBed(netDeviceSpec({ mac: MAC }), { queueSize: 16 });
  const tap = new FakeTap();
  const notes: number[] = [];
  const net = new VirtioNet(tb.mem, tb.slot, tap, (q) => notes.push(q));
  const r = net.activate();
  assert.ok(r.rx.ok && r.tx.ok);
  return { tb, net, tap, notes };
}

const frame = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

describe('virtio/virtio-net', () => {
  it('config space holds the MAC and link-up status', () => {
    const spec = netDeviceSpec({ mac: MAC });
    assert.deepEqual([...spec.config.subarray(0, 6)], [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert.equal(spec.config[6], 1);
    assert.throws(() => parseMac('52:54:00:12:34'));
  });

  it('TX: the frame after the 12-byte header goes to the TAP, gathered from the guest views', () => {
    const { tb, net, tap, notes } = rig();
    const d = tb.drivers[TX_QUEUE];
    const hdr = tb.dataBase;
    const f = frame(60, 1);
    tb.ram.set(f.subarray(0, 20), tb.dataBase + 0x100);
    tb.ram.set(f.subarray(20), tb.dataBase + 0x200);
    const head = d.addChain([{ addr: hdr, len: NET_HDR_SIZE }, { addr: tb.dataBase + 0x100, len: 20 }, { addr: tb.dataBase + 0x200, len: 40 }]);
    d.publish(head);
    assert.equal(net.kickTx(), 1);
    assert.deepEqual(tap.sent, [f]);
    assert.equal(tap.segments[0], 2, 'passed as segments, not copied into one buffer');
    assert.deepEqual(d.takeUsed(), [{ id: head, len: 0 }]);
    assert.deepEqual(notes, [TX_QUEUE]);
    assert.equal(net.stats.txFrames, 1);
  });

  it('TX: header and frame in one descriptor; a malformed chain is completed and skipped', () => {
    const { tb, net, tap } = rig();
    const d = tb.drivers[TX_QUEUE];
    const bad = d.addChain([{ addr: tb.ram.length - 4, len: 100 }]);
    d.publish(bad);
    const f = frame(42, 3);
    tb.ram.set(f, tb.dataBase + NET_HDR_SIZE);
    const good = d.addChain([{ addr: tb.dataBase, len: NET_HDR_SIZE + 42 }]);
    d.publish(good);
    net.kickTx();
    assert.deepEqual(tap.sent, [f]);
    assert.deepEqual(d.takeUsed().map((u) => u.id), [bad, good]);
    assert.equal(net.stats.badChains, 1);
  });

  it('RX: a frame fills a guest buffer with the header then the frame', () => {
    const { tb, tap, notes } = rig();
    const d = tb.drivers[RX_QUEUE];
    tb.ram.fill(0xee, tb.dataBase, tb.dataBase + 2048);
    const head = d.addChain([{ addr: tb.dataBase, len: 1526 + NET_HDR_SIZE, write: true }]);
    d.publish(head);
    const f = frame(98, 9);
    tap.cb!(f);
    assert.deepEqual(d.takeUsed(), [{ id: head, len: NET_HDR_SIZE + 98 }]);
    const hdr = tb.ram.subarray(tb.dataBase, tb.dataBase + NET_HDR_SIZE);
    assert.deepEqual([...hdr], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], 'zeroed header, num_buffers = 1');
    assert.deepEqual(tb.ram.subarray(tb.dataBase + NET_HDR_SIZE, tb.dataBase + NET_HDR_SIZE + 98), f);
    assert.deepEqual(notes, [RX_QUEUE]);
  });

  it('RX: header and frame spread across several writable descriptors', () => {
    const { tb, net, tap } = rig();
    const d = tb.drivers[RX_QUEUE];
    const a = tb.dataBase;
    const head = d.addChain([{ addr: a, len: 10, write: true }, { addr: a + 0x100, len: 50, write: true }, { addr: a + 0x200, len: 2000, write: true }]);
    d.publish(head);
    const f = frame(100, 4);
    tap.cb!(f);
    const got = Buffer.concat([tb.ram.subarray(a, a + 10), tb.ram.subarray(a + 0x100, a + 0x100 + 50), tb.ram.subarray(a + 0x200, a + 0x200 + 52)]);
    assert.deepEqual(got.subarray(NET_HDR_SIZE), Buffer.from(f));
    assert.equal(net.stats.rxFrames, 1);
  });

  it('RX: frames wait in the backlog until the guest posts buffers; undersized buffers drop the frame', () => {
    const { tb, net, tap } = rig();
    const d = tb.drivers[RX_QUEUE];
    tap.cb!(frame(60, 1));
    tap.cb!(frame(61, 2));
    assert.equal(net.backlogLength, 2);
    const small = d.addChain([{ addr: tb.dataBase, len: 30, write: true }]);
    d.publish(small);
    const big = d.addChain([{ addr: tb.dataBase + 0x1000, len: 2048, write: true }]);
    d.publish(big);
    net.kickRx();
    assert.equal(net.stats.rxDropped, 1);
    assert.deepEqual(d.takeUsed(), [{ id: small, len: 0 }, { id: big, len: NET_HDR_SIZE + 61 }]);
    assert.equal(net.backlogLength, 0);
  });

  it('recovery: TX in flight is re-sent, RX in flight is reused first', () => {
    const { tb, net, tap } = rig();
    const rxd = tb.drivers[RX_QUEUE];
    const txd = tb.drivers[TX_QUEUE];
    const rxHead = rxd.addChain([{ addr: tb.dataBase, len: 2048, write: true }]);
    rxd.publish(rxHead);
    assert.equal(net.rx.pop().kind, 'chain'); // popped, then the process died before a frame came
    const f = frame(50, 5);
    tb.ram.set(f, tb.dataBase + 0x4000 + NET_HDR_SIZE);
    const txHead = txd.addChain([{ addr: tb.dataBase + 0x4000, len: NET_HDR_SIZE + 50 }]);
    txd.publish(txHead);
    assert.equal(net.tx.pop().kind, 'chain');
    const page = StatePage.attach(tb.pageBytes);
    assert.ok(page.validate().ok, page.validate().errors.join());
    const tap2 = new FakeTap();
    const notes: number[] = [];
    const net2 = new VirtioNet(new GuestMemory([hostRegion(0, tb.ram)]), page.device(0), tap2, (q) => notes.push(q));
    const r = net2.activate();
    assert.ok(r.rx.ok && r.tx.ok);
    assert.deepEqual(tap2.sent, [f]);
    assert.ok(notes.includes(RX_QUEUE) && notes.includes(TX_QUEUE), 'every queue signalled once');
    tap2.cb!(frame(70, 6));
    assert.deepEqual(rxd.takeUsed(), [{ id: rxHead, len: NET_HDR_SIZE + 70 }]);
    assert.equal(tap.sent.length, 0);
    assert.equal(iovLength(tap2.sent), 50);
  });
});
