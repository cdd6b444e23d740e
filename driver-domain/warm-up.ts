/**
 * JIT warm-up of the block data path. A fresh driver-domain runs its
 * per-request JavaScript (pop, chain walk, request parse, SQE prep, reap,
 * used-ring publish, the busy poll) in V8's interpreter and baseline tiers for
 * the first few thousand requests, and V8's optimizing compiler threads then
 * compete with the I/O for the one CPU the guest's vCPU leaves free. This
 * pushes a few thousand read requests through the same classes (VirtioBlk,
 * Virtqueue, UringBlockBackend, BusyPoll) on a private virtqueue in private
 * memory before the guest uses the disk, so the guest's first requests
 * already run optimized code.
 *
 * The requests go through the disk's own backend, the object that will serve
 * the guest: the optimized code is specialised to that object, and nothing
 * the warm-up does afterwards invalidates it (closing a private backend did:
 * it changed fields the code had assumed constant). Nothing the guest can see
 * is touched: a private VirtioBlk is only ever given read and GET_ID requests,
 * for the start of the disk, which is read into the page cache first so no
 * warm-up read waits for the disk.
 */
import * as fs from 'fs';
import { UringBlockBackend } from '../virtio/block-backend';
import { native } from '../native/kvm';
import { BusyPoll } from './busy-poll';
import { GuestMemory, hostRegion } from '../contracts/memory';
import { ControlPage, DeviceCounters } from '../contracts/control-page';
import { CONTROL_SIZE } from '../contracts/fds';
import { StatePage } from '../contracts/state-page';
import { SplitRingDriver, layoutRing } from '../virtio/virtqueue-driver';
import { Status } from '../contracts/virtio-mmio-layout';
import { VirtioBlk, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, blkDeviceSpec } from '../virtio/virtio-blk';

/** Keeps alive what an unfinished warm-up's reads may still write into (never expected to be used). */
const abandoned: unknown[] = [];

/** The warm-up's busy-poll window (us): it only needs the poll's code to run, not to wait. */
const POLL_WINDOW_US = 10;

/** How long the warm-up waits at most for a batch's reads to complete (ms); then it gives up. */
const INFLIGHT_WAIT_MS = 1000;

/** How long the warm-up waits at most for V8's background threads to finish their work (ms). */
const SETTLE_MAX_MS = 300;

/**
 * Waits until this process's other threads (V8's optimizing compiler and GC helpers; the warm-up
 * runs before any other thread of ours exists) have been idle for 5 ms, or SETTLE_MAX_MS. The
 * optimizing compiler works on a background thread: functions queued late in the warm-up would
 * otherwise be compiled after the guest started, on the one CPU its vCPU leaves free. CPU time
 * per thread from /proc/self/task/N/schedstat (ns).
 */
function settleCompiler(guestWaiting?: () => boolean): void {
  const busyNs = (): number => {
    let sum = 0;
    for (const t of fs.readdirSync('/proc/self/task')) {
      if (Number(t) === process.pid) continue;
      try { sum += Number(fs.readFileSync(`/proc/self/task/${t}/schedstat`, 'utf8').split(' ')[0]); } catch { /* thread gone */ }
    }
    return sum;
  };
  const nap = new Int32Array(new SharedArrayBuffer(4));
  const until = performance.now() + SETTLE_MAX_MS;
  let last = busyNs();
  while (performance.now() < until && !guestWaiting?.()) {
    Atomics.wait(nap, 0, 0, 5);
    const now = busyNs();
    if (now - last < 500_000) return; // under 0.5 ms of work in 5 ms: idle
    last = now;
  }
}

/**
 * Run about `requests` reads (batches of 1 to 32: mostly 4 KiB, every 8th batch 256 KiB)
 * through a private VirtioBlk on `be`, the idle backend of a disk no guest uses yet; `reap` is
 * the very function the live disk's busy poll runs as side work (another closure there would
 * not match the optimized poll: a deopt at the guest's first poll). `guestWaiting`, looked at
 * before each batch, ends the warm-up early when it says a guest request waits (at boot: a kick in
 * one of the disk's eventfds), so the guest's first I/O waits one batch, not the whole warm-up;
 * the guest's own requests then finish warming the code. Returns the milliseconds it took and
 * how many requests it ran, or undefined when it was skipped (tiny disk) or failed. Never throws.
 */
export function warmUpBlk(be: UringBlockBackend, reap: () => number, requests = 4096, guestWaiting?: () => boolean): { ms: number; requests: number; cut: boolean } | undefined {
  const t0 = performance.now();
  const { fd, size } = be;
  const QD = 32;
  const SMALL = 4096;
  const LARGE = 256 * 1024;
  const span = Math.min(size, 4 << 20) - (Math.min(size, 4 << 20) % LARGE);
  if (span < LARGE) return undefined;
  if (guestWaiting?.()) return { ms: 0, requests: 0, cut: true }; // before the bed is even made
  const sink = be.sink; // the live device: the private VirtioBlk takes its place meanwhile
  const ramBytes = QD * (LARGE + 4096) + (1 << 20);
  let ramFd = -1;
  let keepRam = false;
  let privateSlot: { status: number } | undefined;
  try {
    // Page-cache the span: warm-up reads complete inside io_uring_enter (large ones on a worker
    // where the host has CPUs to spare, as the live disk's do).
    const chunk = Buffer.allocUnsafe(LARGE);
    for (let off = 0; off < span; off += LARGE) fs.readSync(fd, chunk, 0, LARGE, off);

    // A private bed like virtio/testbed's, over a mapping as the real guest RAM is (a memfd the
    // addon maps, not a SharedArrayBuffer): the optimized code then sees the same kinds of arrays.
    // Its ~9 MiB are given back when the warm-up ends (below): an ArrayBuffer of its own would keep
    // them resident until a major GC, which an idle driver-domain may never run (issue 19, memory).
    ramFd = native.memfdCreate('tsvmm-dd-warm-up', ramBytes);
    const ram = native.mmap(ramFd, ramBytes, 0, true);
    const mem = new GuestMemory([hostRegion(0, ram)]);
    const g = { maxDevices: 1, maxQueues: 1, maxQueueSize: 64 };
    const page = StatePage.format(new Uint8Array(new ArrayBuffer(StatePage.layoutSize(g))), g);
    const spec = blkDeviceSpec(be);
    const slot = privateSlot = page.device(page.addDevice({ ...spec, queueNumMax: 64 }));
    slot.driverFeatures = spec.deviceFeatures;
    slot.status = Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK;
    const ring = layoutRing(0x1000, 64);
    const d = new SplitRingDriver(mem, ring);
    d.configure(slot, 0);
    const dataBase = Math.ceil(ring.end / 65536) * 65536;
    const blk = new VirtioBlk(mem, slot, be, () => {});
    // Counting into a private control page, as every served disk counts into the real one.
    blk.counters = new DeviceCounters(new ControlPage(new ArrayBuffer(CONTROL_SIZE)), 0);
    if (!blk.activate().ok) return undefined;
    const kept = new BusyPoll(POLL_WINDOW_US);
    // Per slot: an indirect table (3 entries), the 16-byte header, the status byte, then the data buffer.
    const slotBytes = LARGE + 4096;
    const sectors = span / 512;
    let seed = 0x2545f491;
    let done = 0;
    for (let batch = 0; done < requests; batch++) {
      if (guestWaiting?.()) return { ms: performance.now() - t0, requests: done, cut: true };
      // Batches of 1, 4, 12 and 32 requests, so the per-kick code runs often too; every 8th of 256 KiB.
      const len = batch % 8 === 7 ? LARGE : SMALL;
      const n = [1, 4, 12, QD][batch % 4];
      for (let i = 0; i < n; i++) {
        const base = dataBase + i * slotBytes;
        const table = base, hdr = base + 64, status = base + 128, data = base + 4096;
        seed = (seed * 1103515245 + 12345) >>> 0;
        const sector = (seed % (sectors - len / 512 + 1)) & ~7;
        // Now and then a GET_ID (a guest's driver asks at probe time), so its branches have run too.
        const getId = i === 0 && batch % 16 === 0;
        const hv = mem.view(hdr, 16);
        hv.setUint32(0, getId ? VIRTIO_BLK_T_GET_ID : VIRTIO_BLK_T_IN, true);
        hv.setUint32(8, getId ? 0 : sector, true);
        hv.setUint32(12, 0, true);
        const dataLen = getId ? VIRTIO_BLK_ID_BYTES : len;
        d.publish(d.addIndirectChain(table, [{ addr: hdr, len: 16 }, { addr: data, len: dataLen, write: true }, { addr: status, len: 1, write: true }]));
      }
      // Every other batch through a busy poll, as the live disk serves a polling guest's next
      // requests: alternately a fresh one (no back-off, so its wait spins out a window) and one
      // kept across batches (whose back-off skips polls).
      if (batch % 2) (batch % 4 === 1 ? new BusyPoll(POLL_WINDOW_US) : kept).follow(blk.vq, () => blk.kick(), true, reap);
      else blk.kick();
      // Inline reads are done already; a worker's (large ones, where the host has CPUs to spare) may
      // take a moment, the first while the worker starts.
      for (const until = performance.now() + INFLIGHT_WAIT_MS; blk.inflightCount > 0 && performance.now() < until;) be.reap();
      if (blk.inflightCount > 0) {
        abandoned.push(ram);
        keepRam = true; // with its pages: a read may still land there
        return undefined;
      }
      // What the safety timer does once the disk is idle: stop it (the next request starts it again).
      be.tick();
      d.takeUsed();
      done += n;
    }
    settleCompiler(guestWaiting);
    return { ms: performance.now() - t0, requests: done, cut: false };
  } catch {
    return undefined;
  } finally {
    // The private device stops running: a kick its last round left for setImmediate (past
    // KICK_BUDGET_MS), or a busy poll's next turn, then returns at kick()'s first check instead of
    // reading the ring below after its pages went. That read broke the private queue ("avail idx
    // moved") in the code the guest's queue shares, and the deopt cost the guest's first ~30,000
    // requests their optimized code (bench/blk rand4k polled: 150-190k IOPS against 400k+ later).
    if (privateSlot) privateSlot.status = Status.FAILED;
    be.sink = sink;
    // The bed's pages go now (no read is in flight into them): truncated to nothing, then to its
    // size again, so that what still reads the private ring later (the backend's safety timer)
    // finds zeroes, not a SIGBUS. The mapping goes with the buffer when that is collected.
    if (ramFd >= 0) {
      if (!keepRam) {
        try { fs.ftruncateSync(ramFd, 0); fs.ftruncateSync(ramFd, ramBytes); } catch { /* kept */ }
      }
      fs.closeSync(ramFd);
    }
  }
}
