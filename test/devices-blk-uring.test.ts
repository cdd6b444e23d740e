/**
 * The io_uring block backend (virtio/block-backend.ts UringBlockBackend over
 * virtio/io-uring.ts) on its own and under virtio-blk: correct data through
 * single-buffer and vectored reads/writes, many requests really in flight in
 * the kernel at once (reads on a pipe that block until written), a drained
 * batch submitted together and published with one used->idx update and at
 * most one interrupt, a request reaching the used ring only once its I/O
 * finished (the state page keeps it in flight until then), errors (end of
 * disk, out-of-range sectors, read-only), and the runtime fallback to the
 * thread-pool backend.
 */

import { strict as assert } from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { makeTestBed } from '../virtio/testbed';
import { Alignment, BlockBackend, FileBlockBackend, UringBlockBackend, alignedBuffer, dioAlignment, isBatched, largeTransferPolicy, openBlockBackend, openDiskFd } from '../virtio/block-backend';
import { VirtioBlk, blkDeviceSpec, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR } from '../virtio/virtio-blk';
import { StatePage } from '../contracts/state-page';
import { GuestMemory, hostRegion } from '../contracts/memory';
import { execFileSync } from 'child_process';
import { skipBecause } from './helpers/tsvmm';
import { warmUpBlk } from '../driver-domain/warm-up';

const DISK = 1024 * 1024;

let dir: string;
before(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-uring-'))));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function tempDisk(fill = 0): { path: string; fd: number } {
  const p = path.join(dir, `disk-${Math.random().toString(36).slice(2)}.img`);
  fs.writeFileSync(p, Buffer.alloc(DISK, fill));
  return { path: p, fd: fs.openSync(p, 'r+') };
}

/** A temporary disk whose every sector is filled with its sector number's low byte. */
function sectorPatternDisk(): { path: string; fd: number } {
  const d = tempDisk();
  const f = Buffer.alloc(DISK);
  for (let s = 0; s < DISK / 512; s++) f.fill(s & 0xff, s * 512, s * 512 + 512);
  fs.writeSync(d.fd, f, 0, DISK, 0);
  return d;
}

/** A pipe as a "disk": reads block in the kernel until the test writes to the other end. */
function pipeDisk(): { read: number; write: number } {
  const p = path.join(dir, `fifo-${Math.random().toString(36).slice(2)}`);
  execFileSync('mkfifo', [p]);
  // O_RDWR: opening a FIFO that way does not wait for a writer (Linux), and reads stay blocking.
  const read = fs.openSync(p, fs.constants.O_RDWR);
  const write = fs.openSync(p, fs.constants.O_WRONLY);
  return { read, write };
}

function uring(fd: number, size = DISK, readOnly = false, direct?: Alignment): UringBlockBackend {
  return new UringBlockBackend(fd, size, readOnly, 'uring-test', { completions: 'poll', direct });
}

const until = async (cond: () => boolean, ms = 2000): Promise<void> => {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 2));
  }
};

describe('virtio/io-uring block backend', () => {
  it('is available here (io_uring_setup works)', function () {
    const d = tempDisk();
    try {
      const o = openBlockBackend(d.fd, DISK, false, 'x', { completions: 'poll' });
      // Only the kernel may rule io_uring out (sysctl kernel.io_uring_disabled); a failure of our own setup must fail here.
      const disabled = (() => { try { return fs.readFileSync('/proc/sys/kernel/io_uring_disabled', 'utf8').trim(); } catch { return '0'; } })();
      if (o.kind !== 'uring' && disabled !== '0') skipBecause(this, `kernel.io_uring_disabled=${disabled}; the thread-pool fallback is tested below`);
      assert.equal(o.kind, 'uring', o.why);
      (o.backend as UringBlockBackend).close();
    } finally {
      fs.closeSync(d.fd);
    }
  });

  it('reads and writes the right bytes, single-buffer and vectored, and flushes', async () => {
    const d = tempDisk(0x11);
    const be = uring(d.fd);
    const ram = new Uint8Array(new ArrayBuffer(1 << 20));
    ram.fill(0xa5, 0, 4096);
    ram.fill(0x5a, 4096, 8192);
    assert.equal(await be.write([ram.subarray(0, 4096)], 8192), 4096);
    assert.equal(await be.write([ram.subarray(4096, 4096 + 100), ram.subarray(4096 + 100, 8192)], 16384), 4096);
    await be.flush();
    const disk = fs.readFileSync(d.path);
    assert.ok(disk.subarray(8192, 12288).every((b) => b === 0xa5));
    assert.ok(disk.subarray(16384, 20480).every((b) => b === 0x5a));
    assert.equal(disk[8191], 0x11);
    assert.equal(disk[20480], 0x11);
    const a = ram.subarray(65536, 65536 + 512);
    const b = ram.subarray(131072, 131072 + 3584);
    assert.equal(await be.read([a, b], 8192 + 4096 - 512), 4096);
    assert.ok(a.every((x) => x === 0xa5));
    assert.ok(b.every((x) => x === 0x11), 'bytes 12288.. are the old fill');
    be.close();
    fs.closeSync(d.fd);
  });

  it('large transfers (thread pool, or io_uring workers) move the right bytes and fail past the end', async () => {
    for (const large of ['pool', 'wq'] as const) {
      const d = tempDisk(0x21);
      const be = new UringBlockBackend(d.fd, DISK, false, 'x', { completions: 'poll', largeFrom: 8192, large });
      const ram = new Uint8Array(new ArrayBuffer(1 << 20));
      for (let i = 0; i < 65536; i++) ram[i] = (i * 7) & 0xff;
      assert.equal(await be.write([ram.subarray(0, 1000), ram.subarray(1000, 65536)], 4096), 65536);
      const back = ram.subarray(131072, 131072 + 65536 + 4096);
      assert.equal(await be.read([back.subarray(0, 30000), back.subarray(30000)], 0), 65536 + 4096);
      assert.ok(back.subarray(0, 4096).every((x) => x === 0x21));
      for (let i = 0; i < 65536; i++) assert.equal(back[4096 + i], (i * 7) & 0xff, `${large} byte ${i}`);
      await assert.rejects(be.read([ram.subarray(0, 16384)], DISK - 8192), /end of disk/);
      be.close();
      fs.closeSync(d.fd);
    }
  });

  it('large transfers leave the submitting thread only where the host has CPUs to spare', () => {
    const saved = { from: process.env.TSVMM_BLK_LARGE_FROM, large: process.env.TSVMM_BLK_LARGE };
    delete process.env.TSVMM_BLK_LARGE_FROM;
    delete process.env.TSVMM_BLK_LARGE;
    try {
      assert.deepEqual(largeTransferPolicy(1, 2), {}, '2 CPUs, 1 vCPU: all inline');
      assert.deepEqual(largeTransferPolicy(2, 4), {}, '4 CPUs, 2 vCPUs: one spare is not enough');
      assert.deepEqual(largeTransferPolicy(1, 16), { largeFrom: 256 * 1024, large: 'wq', workers: 14 });
      process.env.TSVMM_BLK_LARGE_FROM = 'Infinity';
      assert.deepEqual(largeTransferPolicy(1, 16), {}, 'the env turns it off');
      process.env.TSVMM_BLK_LARGE_FROM = '65536';
      process.env.TSVMM_BLK_LARGE = 'pool';
      assert.deepEqual(largeTransferPolicy(1, 2), { largeFrom: 65536, large: 'pool', workers: undefined }, 'or on');
    } finally {
      for (const [k, v] of [['TSVMM_BLK_LARGE_FROM', saved.from], ['TSVMM_BLK_LARGE', saved.large]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it('io_uring workers capped at one still complete every large transfer', async () => {
    const d = tempDisk(0x42);
    const be = new UringBlockBackend(d.fd, DISK, false, 'x', { completions: 'poll', largeFrom: 4096, large: 'wq', workers: 1 });
    const ram = new Uint8Array(new ArrayBuffer(1 << 20));
    const reads = Array.from({ length: 8 }, (_, i) => be.read([ram.subarray(i * 65536, (i + 1) * 65536)], i * 65536));
    assert.deepEqual(await Promise.all(reads), Array(8).fill(65536));
    assert.ok(ram.subarray(0, 8 * 65536).every((x) => x === 0x42));
    be.close();
    fs.closeSync(d.fd);
  });

  it('an end-of-disk read fails (also when it starts inside the disk)', async () => {
    const d = tempDisk();
    const be = uring(d.fd);
    const buf = new Uint8Array(new ArrayBuffer(8192));
    await assert.rejects(be.read([buf], DISK), /end of disk/);
    await assert.rejects(be.read([buf], DISK - 4096), /end of disk/);
    be.close();
    fs.closeSync(d.fd);
  });

  it('keeps many requests in flight in the kernel at once and completes each when its data arrives', async () => {
    const p = pipeDisk();
    const be = uring(p.read, DISK);
    const bufs = [0, 1, 2, 3].map(() => new Uint8Array(new ArrayBuffer(512)));
    const done: number[] = [];
    bufs.forEach((b, i) => be.queueRead([b], 0, (err) => { assert.equal(err, null); done.push(i); }));
    be.submit();
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(be.pending, 4, 'all four are in the kernel, none completed');
    assert.deepEqual(done, []);
    fs.writeSync(p.write, Buffer.alloc(1024, 7));
    await until(() => done.length === 2);
    assert.equal(be.pending, 2);
    fs.writeSync(p.write, Buffer.alloc(1024, 8));
    await until(() => done.length === 4);
    assert.equal(be.pending, 0);
    assert.deepEqual(bufs.map((b) => b[0]).sort(), [7, 7, 8, 8]);
    be.close();
    fs.closeSync(p.read);
    fs.closeSync(p.write);
  });

  it('signals its eventfd for completions that arrive after submit', async () => {
    const p = pipeDisk();
    const be = new UringBlockBackend(p.read, DISK, false, 'x', { completions: 'eventfd' });
    assert.ok(be.completionFd >= 0);
    const buf = new Uint8Array(new ArrayBuffer(512));
    let ok = false;
    let batches = 0;
    be.sink = { flushCompletions: () => { batches++; } };
    be.queueRead([buf], 0, (err) => { ok = err === null; });
    be.submit();
    const count = Buffer.alloc(8);
    assert.throws(() => fs.readSync(be.completionFd, count), /EAGAIN/, 'no completion yet');
    fs.writeSync(p.write, Buffer.alloc(512, 3));
    await until(() => { try { return fs.readSync(be.completionFd, count) === 8; } catch { return false; } });
    be.reap();
    assert.ok(ok);
    assert.equal(batches, 1);
    assert.equal(buf[0], 3);
    be.close();
    fs.closeSync(p.read);
    fs.closeSync(p.write);
  });

  it('O_DIRECT (cache=none): both backends bounce misaligned buffers and move aligned ones straight, with the right bytes', async function () {
    const p = path.join(dir, 'direct.img');
    fs.writeFileSync(p, Buffer.alloc(DISK, 0x33));
    let fd: number;
    try { fd = openDiskFd(p, false, 'none'); } catch (e) { return skipBecause(this, `${os.tmpdir()} refuses O_DIRECT (${(e as NodeJS.ErrnoException).code})`); }
    const a = dioAlignment(fd);
    try {
      for (const be of [uring(fd, DISK, false, a), new FileBlockBackend(fd, DISK, false, 'direct', a)]) {
        const page = alignedBuffer(3 * 4096, 4096);
        const odd = page.subarray(8, 8 + 4096); // 8 bytes past a page: O_DIRECT refuses it (EINVAL) unless bounced
        odd.fill(0xc4);
        await be.write([odd], 4096);
        assert.equal(be.bounced, 1);
        const straight = page.subarray(4096, 8192);
        assert.equal(await be.read([straight], 4096), 4096);
        assert.equal(be.bounced, 1, 'an aligned read was bounced');
        assert.ok(straight.every((b) => b === 0xc4));
        const back = page.subarray(8192 + 16, 8192 + 16 + 2048);
        assert.equal(await be.read([back, odd.subarray(0, 2048)], 0), 4096);
        assert.equal(be.bounced, 2);
        assert.ok(back.every((b) => b === 0x33) && odd.subarray(0, 2048).every((b) => b === 0x33));
        if (be instanceof UringBlockBackend) be.close();
      }
      assert.ok(fs.readFileSync(p).subarray(4096, 8192).every((b) => b === 0xc4));
    } finally {
      fs.closeSync(fd);
    }
  });

  it('falls back to the thread pool when io_uring cannot be set up, or when asked to', () => {
    const d = tempDisk();
    const bad = openBlockBackend(d.fd, DISK, false, 'x', { entries: 0 }); // io_uring_setup(0) is EINVAL
    assert.equal(bad.kind, 'threads');
    assert.ok(bad.backend instanceof FileBlockBackend);
    assert.match(bad.why ?? '', /io_uring unavailable/);
    assert.equal(isBatched(bad.backend), false);
    const forced = openBlockBackend(d.fd, DISK, false, 'x', { io: 'threads' });
    assert.equal(forced.kind, 'threads');
    assert.throws(() => openBlockBackend(d.fd, DISK, false, 'x', { io: 'uring', entries: 0 }), /^Error: io=uring, but io_uring is unavailable here \(io_uring_setup.*use io=threads$/);
    const env = process.env.TSVMM_BLK_IO;
    process.env.TSVMM_BLK_IO = 'threads';
    try {
      assert.equal(openBlockBackend(d.fd, DISK, false, 'x').kind, 'threads');
    } finally {
      if (env === undefined) delete process.env.TSVMM_BLK_IO;
      else process.env.TSVMM_BLK_IO = env;
    }
    fs.closeSync(d.fd);
  });
});

interface Req { head: number; data: number; status: number }

function blkRig(backend: BlockBackend, queueSize = 128) {
  const tb = makeTestBed(blkDeviceSpec(backend), { queueSize });
  const notes: number[] = [];
  const blk = new VirtioBlk(tb.mem, tb.slot, backend, (q) => notes.push(q));
  assert.ok(blk.activate().ok);
  let next = tb.dataBase;
  const alloc = (len: number) => { const a = next; next += Math.ceil(len / 64) * 64; return a; };
  const submit = (type: number, sector: number, len: number, fill?: number, publish = true): Req => {
    const hdr = alloc(16);
    const v = tb.mem.view(hdr, 16);
    v.setUint32(0, type, true);
    v.setUint32(8, sector, true);
    const data = alloc(Math.max(len, 1));
    if (fill !== undefined) tb.ram.fill(fill, data, data + len);
    const status = alloc(1);
    tb.ram[status] = 0xff;
    const bufs = [{ addr: hdr, len: 16 }];
    if (len > 0) bufs.push({ addr: data, len, write: type !== VIRTIO_BLK_T_OUT } as never);
    bufs.push({ addr: status, len: 1, write: true } as never);
    const head = tb.drivers[0].addChain(bufs);
    if (publish) tb.drivers[0].publish(head);
    return { head, data, status };
  };
  return { tb, blk, notes, submit };
}

describe('virtio-blk on io_uring', () => {
  it('a drained batch of 32 reads is published with one used->idx update and one interrupt', async () => {
    const d = sectorPatternDisk();
    const be = uring(d.fd);
    const r = blkRig(be);
    const reqs = Array.from({ length: 32 }, (_, i) => r.submit(VIRTIO_BLK_T_IN, i * 9, 4096));
    let maxUsedSeenMidBatch = 0;
    const push = r.blk.vq.pushMany.bind(r.blk.vq);
    let calls = 0;
    r.blk.vq.pushMany = (h, l) => { calls++; maxUsedSeenMidBatch = Math.max(maxUsedSeenMidBatch, h.length); return push(h, l); };
    assert.equal(r.blk.kick(), 32);
    await r.blk.idle();
    assert.equal(r.blk.stats.maxInflight, 32, 'all 32 were started before any completed');
    assert.ok(calls <= 2, `published in ${calls} batches`);
    assert.ok(r.notes.length <= calls, `${r.notes.length} interrupts for ${calls} batches`);
    for (const [i, q] of reqs.entries()) {
      assert.equal(r.tb.ram[q.status], VIRTIO_BLK_S_OK);
      for (let k = 0; k < 8; k++) assert.equal(r.tb.ram[q.data + k * 512], (i * 9 + k) & 0xff, `request ${i} sector ${k}`);
    }
    assert.equal(r.tb.drivers[0].takeUsed().length, 32);
    be.close();
    fs.closeSync(d.fd);
  });

  it('a request reaches the used ring only after its I/O finished; in flight in the state page until then', async () => {
    const p = pipeDisk();
    const be = uring(p.read, DISK);
    const r = blkRig(be);
    const a = r.submit(VIRTIO_BLK_T_IN, 0, 512);
    const b = r.submit(VIRTIO_BLK_T_IN, 1, 512);
    r.blk.kick();
    await new Promise((res) => setTimeout(res, 30));
    assert.equal(r.blk.inflightCount, 2);
    assert.equal(r.tb.drivers[0].usedIdx(), 0);
    assert.deepEqual(r.blk.vq.progress.inflightInOrder(), [a.head, b.head]);
    assert.equal(r.tb.ram[a.status], 0xff);
    fs.writeSync(p.write, Buffer.alloc(1024, 0x42));
    await r.blk.idle();
    assert.deepEqual(r.blk.vq.progress.inflightInOrder(), []);
    assert.equal(r.tb.drivers[0].usedIdx(), 2);
    for (const q of [a, b]) {
      assert.equal(r.tb.ram[q.status], VIRTIO_BLK_S_OK);
      assert.equal(r.tb.ram[q.data], 0x42);
    }
    be.close();
    fs.closeSync(p.read);
    fs.closeSync(p.write);
  });

  it('writes, flushes, out-of-range and read-only requests get the right status', async () => {
    const d = tempDisk();
    const be = uring(d.fd);
    const r = blkRig(be);
    const cap = DISK / 512;
    const w = r.submit(VIRTIO_BLK_T_OUT, 3, 1024, 0xcd);
    const fl = r.submit(VIRTIO_BLK_T_FLUSH, 0, 0);
    const oob = r.submit(VIRTIO_BLK_T_IN, cap, 512);
    const ok = r.submit(VIRTIO_BLK_T_IN, cap - 1, 512);
    r.blk.kick();
    await r.blk.idle();
    assert.equal(r.tb.ram[w.status], VIRTIO_BLK_S_OK);
    assert.equal(r.tb.ram[fl.status], VIRTIO_BLK_S_OK);
    assert.equal(r.tb.ram[oob.status], VIRTIO_BLK_S_IOERR);
    assert.equal(r.tb.ram[ok.status], VIRTIO_BLK_S_OK);
    assert.ok(fs.readFileSync(d.path).subarray(1536, 2560).every((x) => x === 0xcd));
    be.close();
    fs.closeSync(d.fd);

    const ro = tempDisk(0x33);
    const rbe = uring(ro.fd, DISK, true);
    const r2 = blkRig(rbe);
    const w2 = r2.submit(VIRTIO_BLK_T_OUT, 0, 512, 0xee);
    const rd2 = r2.submit(VIRTIO_BLK_T_IN, 0, 512);
    r2.blk.kick();
    await r2.blk.idle();
    assert.equal(r2.tb.ram[w2.status], VIRTIO_BLK_S_IOERR);
    assert.equal(r2.tb.ram[rd2.status], VIRTIO_BLK_S_OK);
    assert.equal(r2.tb.ram[rd2.data], 0x33);
    assert.ok(fs.readFileSync(ro.path).every((x) => x === 0x33));
    rbe.close();
    fs.closeSync(ro.fd);
  });

  /**
   * A disk whose sector s holds bytes (s * mul) & 0xff, its io_uring backend and the live device on
   * it, as in the driver-domain: completions by eventfd, the live device built before the warm-up.
   */
  function warmUpRig(mul: number) {
    const d = tempDisk();
    const f = Buffer.alloc(DISK);
    for (let s = 0; s < DISK / 512; s++) f.fill((s * mul) & 0xff, s * 512, s * 512 + 512);
    fs.writeSync(d.fd, f, 0, DISK, 0);
    const be = new UringBlockBackend(d.fd, DISK, false, `warm-${mul}`, { completions: 'eventfd' });
    return { d, f, be, r: blkRig(be) };
  }

  it('the JIT warm-up runs on the live disk\'s backend, writes nothing, and leaves it serving the live device', async () => {
    const { d, f, be, r } = warmUpRig(7);
    assert.equal(be.sink, r.blk);
    const w = warmUpBlk(be, () => be.reap(), 512);
    assert.ok(w && !w.cut && w.requests >= 512, `warm-up ran: ${JSON.stringify(w)}`);
    assert.equal(be.pending, 0);
    assert.equal(be.sink, r.blk, 'completion batches go to the live device again');
    const q = r.submit(VIRTIO_BLK_T_IN, 100, 4096);
    assert.equal(r.blk.kick(), 1);
    await r.blk.idle();
    assert.equal(r.tb.ram[q.status], VIRTIO_BLK_S_OK);
    for (let k = 0; k < 8; k++) assert.equal(r.tb.ram[q.data + k * 512], ((100 + k) * 7) & 0xff, `sector ${100 + k}`);
    assert.deepEqual(r.tb.drivers[0].takeUsed().map((u) => u.id), [q.head], 'published by the live device');
    assert.ok(r.notes.length >= 1, 'the live device signalled its completion');
    assert.ok(fs.readFileSync(d.path).equals(f), 'the disk is unchanged');
    be.close();
    fs.closeSync(d.fd);
  });

  it('the warm-up ends at its next batch once a guest request waits, and the live device serves it', async () => {
    const { d, f, be, r } = warmUpRig(3);
    // The guest's request is in its ring before the warm-up looks: the driver-domain's predicate
    // is a kick in an eventfd; here, whether the live ring holds a request.
    const q = r.submit(VIRTIO_BLK_T_IN, 40, 4096);
    let looks = 0;
    const w = warmUpBlk(be, () => be.reap(), 4096, () => ++looks > 3 && r.blk.vq.hasAvailable());
    assert.ok(w?.cut, `cut short: ${JSON.stringify(w)}`);
    assert.equal(looks, 4, 'it looked before its bed and before each batch, and stopped at the first look that saw the request');
    assert.ok(w.requests > 0 && w.requests < 4096, `${w.requests} warm-up requests ran`);
    assert.equal(be.pending, 0);
    assert.equal(be.sink, r.blk, 'completion batches go to the live device again');
    assert.equal(r.blk.kick(), 1);
    await r.blk.idle();
    assert.equal(r.tb.ram[q.status], VIRTIO_BLK_S_OK);
    for (let k = 0; k < 8; k++) assert.equal(r.tb.ram[q.data + k * 512], ((40 + k) * 3) & 0xff, `sector ${40 + k}`);
    assert.ok(fs.readFileSync(d.path).equals(f), 'the disk is unchanged');
    be.close();
    fs.closeSync(d.fd);
  });

  it('requests of every chain shape get the same outcome on the batched path as the general parser gives them', async () => {
    // VirtioBlk.drainFast starts a read or write whose header is one 16-byte segment and whose
    // status is the last, 1-byte, segment straight from the walked segments; every other shape
    // (and every request it would fail) takes pop()'s views and parseBlkRequest.
    const d = sectorPatternDisk();
    const be = uring(d.fd);
    const r = blkRig(be);
    const ram = r.tb.ram;
    let next = r.tb.dataBase + 0x40000;
    const alloc = (len: number) => { const a = next; next += Math.ceil(len / 64) * 64; return a; };
    const header = (type: number, sector: number) => {
      const h = alloc(16);
      const v = r.tb.mem.view(h, 16);
      v.setUint32(0, type, true);
      v.setUint32(8, sector % 0x1_0000_0000, true);
      v.setUint32(12, Math.floor(sector / 0x1_0000_0000), true);
      return h;
    };
    const chain = (bufs: { addr: number; len: number; write?: boolean }[]) => {
      const head = r.tb.drivers[0].addChain(bufs as never);
      r.tb.drivers[0].publish(head);
      return head;
    };
    const cap = DISK / 512;
    const st = () => { const a = alloc(1); ram[a] = 0xff; return a; };
    // 1. a read whose header is split in two descriptors
    const h1 = header(VIRTIO_BLK_T_IN, 5);
    const d1 = alloc(512), s1 = st();
    chain([{ addr: h1, len: 8 }, { addr: h1 + 8, len: 8 }, { addr: d1, len: 512, write: true }, { addr: s1, len: 1, write: true }]);
    // 2. a read whose status byte shares the data's descriptor
    const d2 = alloc(513);
    chain([{ addr: header(VIRTIO_BLK_T_IN, 6), len: 16 }, { addr: d2, len: 513, write: true }]);
    // 3. a read into two data descriptors (fast path, two views)
    const d3a = alloc(512), d3b = alloc(512), s3 = st();
    chain([{ addr: header(VIRTIO_BLK_T_IN, 7), len: 16 }, { addr: d3a, len: 512, write: true }, { addr: d3b, len: 512, write: true }, { addr: s3, len: 1, write: true }]);
    // 4. a read with device-readable data: IOERR
    const s4 = st();
    chain([{ addr: header(VIRTIO_BLK_T_IN, 1), len: 16 }, { addr: alloc(512), len: 512 }, { addr: s4, len: 1, write: true }]);
    // 5. a write from two data descriptors
    const w5a = alloc(512), w5b = alloc(512), s5 = st();
    ram.fill(0xab, w5a, w5a + 512);
    ram.fill(0xcd, w5b, w5b + 512);
    chain([{ addr: header(VIRTIO_BLK_T_OUT, 20), len: 16 }, { addr: w5a, len: 512 }, { addr: w5b, len: 512 }, { addr: s5, len: 1, write: true }]);
    // 6. a write with device-writable data: IOERR, nothing written
    const s6 = st();
    chain([{ addr: header(VIRTIO_BLK_T_OUT, 30), len: 16 }, { addr: alloc(512), len: 512, write: true }, { addr: s6, len: 1, write: true }]);
    // 7. a read past the end, 8. a read of 100 bytes, 9. a sector number above 2^32: IOERR
    const s7 = st(), s8 = st(), s9 = st();
    chain([{ addr: header(VIRTIO_BLK_T_IN, cap), len: 16 }, { addr: alloc(512), len: 512, write: true }, { addr: s7, len: 1, write: true }]);
    chain([{ addr: header(VIRTIO_BLK_T_IN, 2), len: 16 }, { addr: alloc(100), len: 100, write: true }, { addr: s8, len: 1, write: true }]);
    chain([{ addr: header(VIRTIO_BLK_T_IN, 2 + 0x1_0000_0000), len: 16 }, { addr: alloc(512), len: 512, write: true }, { addr: s9, len: 1, write: true }]);
    assert.equal(r.blk.kick(), 9);
    await r.blk.idle();
    assert.equal(ram[s1], VIRTIO_BLK_S_OK);
    assert.ok(ram.subarray(d1, d1 + 512).every((b) => b === 5));
    assert.equal(ram[d2 + 512], VIRTIO_BLK_S_OK);
    assert.ok(ram.subarray(d2, d2 + 512).every((b) => b === 6));
    assert.equal(ram[s3], VIRTIO_BLK_S_OK);
    assert.ok(ram.subarray(d3a, d3a + 512).every((b) => b === 7) && ram.subarray(d3b, d3b + 512).every((b) => b === 8));
    assert.equal(ram[s4], VIRTIO_BLK_S_IOERR);
    assert.equal(ram[s5], VIRTIO_BLK_S_OK);
    const back = Buffer.alloc(1024);
    fs.readSync(d.fd, back, 0, 1024, 20 * 512);
    assert.ok(back.subarray(0, 512).every((b) => b === 0xab) && back.subarray(512).every((b) => b === 0xcd));
    assert.equal(ram[s6], VIRTIO_BLK_S_IOERR);
    fs.readSync(d.fd, back, 0, 512, 30 * 512);
    assert.ok(back.subarray(0, 512).every((b) => b === 30), 'the refused write wrote nothing');
    assert.deepEqual([ram[s7], ram[s8], ram[s9]], [VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_IOERR]);
    assert.equal(r.tb.drivers[0].takeUsed().length, 9);
    be.close();
    fs.closeSync(d.fd);
  });

  it('a restarted device resubmits requests still in flight through io_uring, in order', async () => {
    const p = pipeDisk();
    const hung = uring(p.read, DISK);
    const r = blkRig(hung);
    const a = r.submit(VIRTIO_BLK_T_IN, 0, 512);
    const b = r.submit(VIRTIO_BLK_T_IN, 1, 512);
    r.blk.kick();
    assert.equal(r.blk.inflightCount, 2);
    // The driver-domain dies (its ring goes with it); a new one attaches to the same page and RAM.
    hung.close();
    const d = tempDisk(0x77);
    const be = uring(d.fd);
    const page = StatePage.attach(r.tb.pageBytes);
    const notes: number[] = [];
    const blk2 = new VirtioBlk(new GuestMemory([hostRegion(0, r.tb.ram)]), page.device(0), be, (q) => notes.push(q));
    const res = blk2.activate();
    assert.ok(res.ok && res.recovered);
    await blk2.idle();
    assert.deepEqual(r.tb.drivers[0].takeUsed().map((u) => u.id), [a.head, b.head]);
    for (const q of [a, b]) {
      assert.equal(r.tb.ram[q.status], VIRTIO_BLK_S_OK);
      assert.equal(r.tb.ram[q.data], 0x77);
    }
    assert.ok(notes.length >= 1);
    be.close();
    fs.closeSync(d.fd);
    fs.closeSync(p.read);
    fs.closeSync(p.write);
  });
});
