/**
 * virtio/tap-backend: transmitted frames (guest-RAM segments) are
 * batched into one io_uring_enter and only reach the fd at flush(), which
 * VirtioNet calls before it hands the TX buffers back to the guest; the
 * writev mode (and the fallback where io_uring is unavailable, and frames
 * given as views) writes each frame at once, after any queued ones. A FIFO
 * stands in for the TAP fd (the bytes and their order are what is checked;
 * the real TAP is exercised by test/net.test.ts).
 */
import { strict as assert } from 'assert';
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { TapBackend } from '../virtio/tap-backend';
import { makeTestBed } from '../virtio/testbed';
import { VirtioNet, netDeviceSpec, parseMac, NET_HDR_SIZE, TX_QUEUE } from '../virtio/virtio-net';
import { GuestMemory, hostRegion } from '../contracts/memory';
import { ChainSegments } from '../virtio/virtqueue';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-tap-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A FIFO: `write` for the backend, `read` non-blocking for the test. */
function fifo(): { read: number; write: number } {
  const p = path.join(dir, `fifo-${Math.random().toString(36).slice(2)}`);
  execFileSync('mkfifo', [p]);
  const read = fs.openSync(p, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
  const write = fs.openSync(p, fs.constants.O_WRONLY);
  return { read, write };
}

/** Everything readable now (empty when nothing was written). */
function readAll(fd: number): number[] {
  const out: number[] = [];
  const buf = Buffer.alloc(65536);
  for (;;) {
    try {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n <= 0) return out;
      out.push(...buf.subarray(0, n));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return out;
      throw e;
    }
  }
}

const bytes = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 13 + seed) & 0xff);

/** A guest RAM whose region knows its host address (as contracts/guest-ram.ts maps it), and TX chains in it. */
function guest(): { mem: GuestMemory; chain: (segs: [number, Uint8Array][]) => ChainSegments } {
  const buf = new ArrayBuffer(64 * 1024);
  const ram = new Uint8Array(buf);
  const mem = new GuestMemory([hostRegion(0, buf)]);
  const chain = (segs: [number, Uint8Array][]) => {
    const c = new ChainSegments();
    for (const [off, b] of segs) {
      ram.set(b, off);
      if (c.count === c.region.length) c.grow();
      c.region[c.count] = 0;
      c.offset[c.count] = off;
      c.length[c.count] = b.length;
      c.count++;
      c.readableLength += b.length;
    }
    c.firstWritable = c.count;
    return c;
  };
  return { mem, chain };
}

describe('virtio/tap-backend', () => {
  it('io_uring: frames are held until flush(), then written in order in one batch; a frame given as views goes after them', () => {
    const f = fifo();
    const tap = new TapBackend(f.write, 'uring');
    assert.equal(tap.txMode, 'io_uring', 'io_uring is available on this kernel');
    const g = guest();
    const a = bytes(60, 1);
    const b1 = bytes(20, 2);
    const b2 = bytes(30, 3);
    tap.writeSegments(g.mem, g.chain([[0x100, a]]), 0);
    // Two segments behind a 5-byte prefix that is skipped (the virtio-net header's place).
    tap.writeSegments(g.mem, g.chain([[0x400, bytes(5, 9)], [0x800, b1], [0xc00, b2]]), 5);
    assert.deepEqual(readAll(f.read), [], 'nothing reaches the fd before flush()');
    tap.flush();
    assert.deepEqual(readAll(f.read), [...a, ...b1, ...b2]);
    tap.flush(); // nothing queued: no-op
    assert.deepEqual(readAll(f.read), []);
    const c = bytes(10, 4);
    tap.writeSegments(g.mem, g.chain([[0x100, a]]), 0);
    tap.write([c]);
    assert.deepEqual(readAll(f.read), [...a, ...c], 'the queued frame first, then the one written at once');
    assert.equal(tap.dropped, 0);
  });

  it('io_uring: a failed write counts as dropped and the batch still completes', () => {
    const f = fifo();
    fs.closeSync(f.write);
    const tap = new TapBackend(f.write, 'uring'); // a closed fd: every write fails (EBADF)
    const g = guest();
    tap.writeSegments(g.mem, g.chain([[0, bytes(10, 1)]]), 0);
    tap.writeSegments(g.mem, g.chain([[0x100, bytes(10, 2)]]), 0);
    tap.flush();
    assert.equal(tap.dropped, 2);
  });

  it('writev mode writes each frame at once', () => {
    const f = fifo();
    const tap = new TapBackend(f.write, 'writev');
    assert.equal(tap.txMode, 'writev');
    tap.write([bytes(8, 4), bytes(4, 5)]);
    assert.deepEqual(readAll(f.read), [...bytes(8, 4), ...bytes(4, 5)]);
  });

  it('virtio-net TX through it: the frame after the header leaves from guest RAM, and the head is used only after the write', () => {
    const tb = makeTestBed(netDeviceSpec({ mac: parseMac('52:54:00:12:34:56') }), { queueSize: 16 });
    const f = fifo();
    const tap = new TapBackend(f.write, 'uring');
    let usedAtWrite = -1;
    const net = new VirtioNet(tb.mem, tb.slot, tap, () => undefined);
    assert.ok(net.activate().tx.ok);
    const d = tb.drivers[TX_QUEUE];
    const frame = bytes(100, 9);
    tb.ram.set(frame.subarray(0, 40), tb.dataBase + 0x100);
    tb.ram.set(frame.subarray(40), tb.dataBase + 0x300);
    // The header split over two descriptors, then the frame in two more.
    const head = d.addChain([
      { addr: tb.dataBase, len: 5 }, { addr: tb.dataBase + 0x40, len: NET_HDR_SIZE - 5 },
      { addr: tb.dataBase + 0x100, len: 40 }, { addr: tb.dataBase + 0x300, len: 60 },
    ]);
    const flush = tap.flush.bind(tap);
    tap.flush = () => {
      usedAtWrite = d.takeUsed().length;
      flush();
    };
    d.publish(head);
    assert.equal(net.kickTx(), 1);
    assert.equal(usedAtWrite, 0, 'no used element before the frames were written');
    assert.deepEqual(readAll(f.read), [...frame]);
    assert.deepEqual(d.takeUsed(), [{ id: head, len: 0 }]);
    assert.equal(net.stats.txFrames, 1);
  });
});
