/**
 * virtio-blk against a real temp file: write then read back, read-only
 * disks, out-of-range sectors, flush/get-id/unsupported, malformed chains,
 * several requests in flight at once, and resubmission after a restart.
 */

import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { makeTestBed, TestBed } from '../virtio/testbed';
import { FileBlockBackend, BlockBackend } from '../virtio/block-backend';
import {
  VirtioBlk, blkDeviceSpec, parseBlkRequest, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP,
} from '../virtio/virtio-blk';
import { StatePage } from '../contracts/state-page';
import { GuestMemory, hostRegion } from '../contracts/memory';
import { hasFeature, VIRTIO_BLK_F_RO, VIRTQ_DESC_F_NEXT, Interrupt } from '../contracts/virtio-mmio-layout';

const DISK = 1024 * 1024; // 2048 sectors

let dir: string;
before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-blk-'))));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function tempDisk(fill = 0): string {
  const p = path.join(dir, `disk-${Math.random().toString(36).slice(2)}.img`);
  fs.writeFileSync(p, Buffer.alloc(DISK, fill));
  return p;
}

interface Rig {
  tb: TestBed;
  blk: VirtioBlk;
  notes: number[];
  /** Next free data address (bump allocator). */
  next: number;
}

function rig(backend: BlockBackend): Rig {
  const tb = makeTestBed(blkDeviceSpec(backend), { queueSize: 64 });
  const notes: number[] = [];
  const blk = new VirtioBlk(tb.mem, tb.slot, backend, (q) => notes.push(q));
  const r = blk.activate();
  assert.ok(r.ok);
  return { tb, blk, notes, next: tb.dataBase };
}

function alloc(r: Rig, len: number): number {
  const a = r.next;
  r.next += Math.ceil(len / 64) * 64;
  return a;
}

/** Queue one request (header, data, status) and return its head and the addresses. */
function submit(r: Rig, type: number, sector: number, dataLen: number, fill?: number): { head: number; data: number; status: number } {
  const hdr = alloc(r, 16);
  const v = r.tb.mem.view(hdr, 16);
  v.setUint32(0, type, true);
  v.setUint32(8, sector % 2 ** 32, true);
  v.setUint32(12, Math.floor(sector / 2 ** 32), true);
  const data = alloc(r, Math.max(dataLen, 1));
  if (fill !== undefined) r.tb.ram.fill(fill, data, data + dataLen);
  const status = alloc(r, 1);
  r.tb.ram[status] = 0xff;
  const write = type !== VIRTIO_BLK_T_OUT;
  const bufs = [{ addr: hdr, len: 16 }];
  if (dataLen > 0) bufs.push({ addr: data, len: dataLen, write } as never);
  bufs.push({ addr: status, len: 1, write: true } as never);
  const head = r.tb.drivers[0].addChain(bufs);
  r.tb.drivers[0].publish(head);
  return { head, data, status };
}

describe('virtio/virtio-blk', () => {
  it('exposes capacity, seg_max and blk_size in config space', () => {
    const be = FileBlockBackend.open(tempDisk());
    const spec = blkDeviceSpec(be, { segMax: 64 });
    const v = new DataView(spec.config.buffer);
    assert.equal(v.getBigUint64(0, true), BigInt(DISK / 512));
    assert.equal(v.getUint32(12, true), 64);
    assert.equal(v.getUint32(20, true), 512);
    assert.equal(hasFeature(spec.deviceFeatures, VIRTIO_BLK_F_RO), false);
    be.close();
  });

  it('writes then reads back through a real file, zero-copy into guest memory', async () => {
    const file = tempDisk();
    const be = FileBlockBackend.open(file);
    const r = rig(be);
    const w = submit(r, VIRTIO_BLK_T_OUT, 8, 4096, 0xab);
    r.blk.kick();
    await r.blk.idle();
    assert.equal(r.tb.ram[w.status], VIRTIO_BLK_S_OK);
    const disk = fs.readFileSync(file);
    assert.ok(disk.subarray(8 * 512, 8 * 512 + 4096).every((b) => b === 0xab));
    assert.equal(disk[8 * 512 - 1], 0);
    assert.equal(disk[8 * 512 + 4096], 0);
    const rd = submit(r, VIRTIO_BLK_T_IN, 8, 8192);
    r.blk.kick();
    await r.blk.idle();
    assert.equal(r.tb.ram[rd.status], VIRTIO_BLK_S_OK);
    assert.ok(r.tb.ram.subarray(rd.data, rd.data + 4096).every((b) => b === 0xab));
    assert.ok(r.tb.ram.subarray(rd.data + 4096, rd.data + 8192).every((b) => b === 0));
    const used = r.tb.drivers[0].takeUsed();
    assert.deepEqual(used, [{ id: w.head, len: 1 }, { id: rd.head, len: 8193 }]);
    assert.ok(r.notes.length >= 1, 'the driver was notified');
    assert.ok(r.tb.slot.interruptStatus & Interrupt.VRING, 'interrupt bit set in the state page');
    be.close();
  });

  it('a read-only disk rejects writes with IOERR and writes nothing', async () => {
    const file = tempDisk(0x11);
    const be = FileBlockBackend.open(file, { readOnly: true });
    assert.ok(hasFeature(blkDeviceSpec(be).deviceFeatures, VIRTIO_BLK_F_RO));
    const r = rig(be);
    const w = submit(r, VIRTIO_BLK_T_OUT, 0, 512, 0xee);
    const rd = submit(r, VIRTIO_BLK_T_IN, 0, 512);
    r.blk.kick();
    await r.blk.idle();
    assert.equal(r.tb.ram[w.status], VIRTIO_BLK_S_IOERR);
    assert.equal(r.tb.ram[rd.status], VIRTIO_BLK_S_OK);
    assert.equal(r.tb.ram[rd.data], 0x11);
    assert.ok(fs.readFileSync(file).every((b) => b === 0x11));
    be.close();
  });

  it('rejects out-of-range sectors and unaligned lengths, serving the next request', async () => {
    const be = FileBlockBackend.open(tempDisk());
    const r = rig(be);
    const cap = DISK / 512;
    const a = submit(r, VIRTIO_BLK_T_IN, cap, 512);
    const b = submit(r, VIRTIO_BLK_T_OUT, cap - 1, 1024, 1);
    const c = submit(r, VIRTIO_BLK_T_IN, 2 ** 60, 512);
    const d = submit(r, VIRTIO_BLK_T_IN, 0, 100);
    const ok = submit(r, VIRTIO_BLK_T_IN, cap - 1, 512);
    r.blk.kick();
    await r.blk.idle();
    for (const x of [a, b, c, d]) assert.equal(r.tb.ram[x.status], VIRTIO_BLK_S_IOERR);
    assert.equal(r.tb.ram[ok.status], VIRTIO_BLK_S_OK);
    assert.equal(r.blk.stats.errors, 4);
    be.close();
  });

  it('flush, get-id and unsupported types', async () => {
    const be = FileBlockBackend.open(tempDisk(), { id: 'serial-123' });
    const r = rig(be);
    const f = submit(r, VIRTIO_BLK_T_FLUSH, 0, 0);
    const g = submit(r, VIRTIO_BLK_T_GET_ID, 0, 20);
    const u = submit(r, 11 /* DISCARD */, 0, 0);
    r.blk.kick();
    await r.blk.idle();
    assert.equal(r.tb.ram[f.status], VIRTIO_BLK_S_OK);
    assert.equal(r.tb.ram[g.status], VIRTIO_BLK_S_OK);
    assert.equal(Buffer.from(r.tb.ram.subarray(g.data, g.data + 10)).toString(), 'serial-123');
    assert.equal(r.tb.ram[g.data + 10], 0);
    assert.equal(r.tb.ram[u.status], VIRTIO_BLK_S_UNSUPP);
    be.close();
  });

  it('parses a header split across descriptors and data across several', () => {
    const be = FileBlockBackend.open(tempDisk());
    const r = rig(be);
    const m = r.tb.mem;
    const h = alloc(r, 16);
    m.view(h, 16).setUint32(0, VIRTIO_BLK_T_IN, true);
    m.view(h, 16).setUint32(8, 3, true);
    const chain = {
      head: 0,
      readable: [m.slice(h, 5), m.slice(h + 5, 11)],
      writable: [m.slice(0x30000, 512), m.slice(0x31000, 511), m.slice(0x32000, 2)],
      readableLength: 16,
      writableLength: 1025,
    };
    const req = parseBlkRequest(chain, 100, false);
    assert.ok(req.ok);
    if (req.ok) {
      assert.equal(req.sector, 3);
      assert.equal(req.dataLength, 1024);
      assert.equal(req.data.length, 3);
      assert.equal(req.status.byteOffset, m.slice(0x32001, 1).byteOffset);
    }
    be.close();
  });

  it('a malformed chain fails with IOERR where it can, and the next request is served', async () => {
    const be = FileBlockBackend.open(tempDisk(0x22));
    const r = rig(be);
    const d = r.tb.drivers[0];
    const st = alloc(r, 1);
    const [x, y, z] = d.alloc(3);
    d.writeDesc(d.ring.desc, x, alloc(r, 16), 16, VIRTQ_DESC_F_NEXT, y);
    d.writeDesc(d.ring.desc, y, st, 1, VIRTQ_DESC_F_NEXT | 2, z);
    d.writeDesc(d.ring.desc, z, r.tb.ram.length - 4, 512, 2, 0); // past the end of RAM
    d.publish(x);
    const ok = submit(r, VIRTIO_BLK_T_IN, 0, 512);
    r.blk.kick();
    await r.blk.idle();
    assert.equal(r.tb.ram[st], VIRTIO_BLK_S_IOERR);
    assert.equal(r.blk.stats.badChains, 1);
    assert.equal(r.tb.ram[ok.status], VIRTIO_BLK_S_OK);
    assert.equal(r.tb.ram[ok.data], 0x22);
    assert.deepEqual(d.takeUsed().map((u) => u.id), [x, ok.head]);
    be.close();
  });

  it('keeps several requests in flight at once', async () => {
    const file = tempDisk();
    const be = FileBlockBackend.open(file);
    const r = rig(be);
    const reqs = [];
    for (let i = 0; i < 16; i++) reqs.push(submit(r, VIRTIO_BLK_T_OUT, i * 8, 4096, i + 1));
    const started = r.blk.kick();
    assert.equal(started, 16);
    assert.equal(r.blk.inflightCount, 16, 'all 16 were started before any completed');
    await r.blk.idle();
    assert.equal(r.blk.stats.maxInflight, 16);
    for (const q of reqs) assert.equal(r.tb.ram[q.status], VIRTIO_BLK_S_OK);
    const disk = fs.readFileSync(file);
    for (let i = 0; i < 16; i++) assert.equal(disk[i * 4096 + 100], i + 1);
    assert.equal(r.tb.drivers[0].takeUsed().length, 16);
    be.close();
  });

  it('overlaps I/O: completions can come back out of order', async () => {
    const file = tempDisk();
    const real = FileBlockBackend.open(file);
    const delays = [30, 1, 15];
    let n = 0;
    const slow: BlockBackend = {
      size: real.size, readOnly: false, id: 'slow',
      read: (b, o) => new Promise((res) => setTimeout(() => res(real.read(b, o)), delays[n++ % 3])),
      write: (b, o) => real.write(b, o),
      flush: () => real.flush(),
    };
    const r = rig(slow);
    const heads = [0, 1, 2].map((i) => submit(r, VIRTIO_BLK_T_IN, i, 512).head);
    r.blk.kick();
    await r.blk.idle();
    assert.deepEqual(r.tb.drivers[0].takeUsed().map((u) => u.id), [heads[1], heads[2], heads[0]]);
    real.close();
  });

  it('a restarted device resubmits in-flight requests in order and signals once', async () => {
    const file = tempDisk();
    const real = FileBlockBackend.open(file);
    const hung: BlockBackend = { size: real.size, readOnly: false, id: 'x', read: () => new Promise(() => {}), write: () => new Promise(() => {}), flush: () => new Promise(() => {}) };
    const r = rig(hung);
    const a = submit(r, VIRTIO_BLK_T_OUT, 0, 512, 0x5a);
    const b = submit(r, VIRTIO_BLK_T_OUT, 1, 512, 0x5b);
    r.blk.kick();
    assert.equal(r.blk.inflightCount, 2);
    // the driver-domain dies; a new one attaches to the same page and RAM
    const page = StatePage.attach(r.tb.pageBytes);
    assert.ok(page.validate().ok);
    const order: number[] = [];
    const tracking: BlockBackend = { size: real.size, readOnly: false, id: 'x', read: (bb, o) => real.read(bb, o), write: (bb, o) => (order.push(o / 512), real.write(bb, o)), flush: () => real.flush() };
    const notes: number[] = [];
    const blk2 = new VirtioBlk(new GuestMemory([hostRegion(0, r.tb.ram)]), page.device(0), tracking, (q) => notes.push(q));
    const c = submit(r, VIRTIO_BLK_T_OUT, 2, 512, 0x5c); // a kick that arrived during the outage
    const res = blk2.activate();
    assert.ok(res.ok && res.recovered);
    assert.deepEqual(order, [0, 1, 2], 'in-flight first, in submit order, then the new one');
    assert.ok(notes.length >= 1);
    await blk2.idle();
    for (const q of [a, b, c]) assert.equal(r.tb.ram[q.status], VIRTIO_BLK_S_OK);
    const disk = fs.readFileSync(file);
    assert.deepEqual([disk[0], disk[512], disk[1024]], [0x5a, 0x5b, 0x5c]);
    real.close();
  });
});
