/**
 * The driver-domain's view of one virtio device: which fds it waits on, what it does when one
 * fires, and how it is (de)activated as the guest's driver starts and resets it. `serveBlk` and
 * `serveNet` adapt virtio/virtio-blk and virtio/virtio-net (with their backends) to it; the
 * process (driver-domain/main.ts) only dispatches poller events and attaches.
 *
 * Poller tags: one fd of device `index` per slot. Slots 0..13 are its queues' kick eventfds,
 * SLOT_COMPLETION the disk's I/O completion eventfd, SLOT_TAP the TAP.
 */
import * as fs from 'fs';
import { native } from '../native/kvm';
import { VmConfig } from '../proto';
import { DeviceEntry } from '../contracts/device-list';
import { DeviceCounters } from '../contracts/control-page';
import { deviceFds } from '../contracts/fds';
import { GuestMemory } from '../contracts/memory';
import { DeviceSlot } from '../contracts/state-page';
import { Status } from '../contracts/virtio-mmio-layout';
import { VirtioBlk } from '../virtio/virtio-blk';
import { Virtqueue } from '../virtio/virtqueue';
import { VirtioNet } from '../virtio/virtio-net';
import { TapBackend } from '../virtio/tap-backend';
import { tapAttachedName } from '../virtio/tap';
import { UringBlockBackend, describeLargeTransfers, dioAlignment, isBatched, largeTransferPolicy, openBlockBackend } from '../virtio/block-backend';
import { BusyPoll } from './busy-poll';
import { RateLimiter, describeRateLimit } from '../virtio/rate-limiter';
import { processLogger } from '../contracts/log';

export const TAG_SLOTS = 16;
export const SLOT_COMPLETION = 14;
export const SLOT_TAP = 15;
export const tagOf = (index: number, slot: number): number => index * TAG_SLOTS + slot;

export interface ServedDevice {
  /** The fds to register with the poller (on attach), by slot. */
  readonly polled: readonly { fd: number; slot: number; isEventfd: boolean }[];
  /** The guest's driver has the device live (DRIVER_OK, no reset pending). */
  running(): boolean;
  /** Attach to the queues (re-attach: reconcile, resubmit in-flight requests, signal once). */
  activate(): void;
  deactivate(): void;
  /**
   * The guest's driver reset the device since activate() (the vmm cleared its queue records) and
   * set it up again before any event reached us: the queues are bound to rings it no longer uses.
   */
  resetSinceActivate(): boolean;
  /** Poller event on `slot`; `live`: the device is active (events on queues of a dead device are dropped). */
  onEvent(slot: number, live: boolean): void;
  /** An io_uring disk and its reaper, for the JIT warm-up (driver-domain/warm-up.ts). */
  readonly uringDisk?: { be: UringBlockBackend; reap: () => number };
}

/** What every device is built from. */
export interface DeviceContext {
  cfg: VmConfig;
  memory: GuestMemory;
  slot: DeviceSlot;
  /** Counters for the metrics (contracts/control-page.ts), where the control page is valid. */
  counters?: DeviceCounters;
}

const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
const ONE_IOV = [new Uint8Array(ONE)];
/** The addon's non-throwing writev (native/kvm/fdio.cc), looked up once: the irqfd write on every signal. */
const fdWritev = native.fdWritev.bind(native);

function common(ctx: DeviceContext, d: DeviceEntry) {
  const fds = deviceFds(d.index, d.queues);
  return {
    fds,
    notify: (q: number) => { if (fdWritev(fds.call[q], ONE_IOV) < 0) fs.writeSync(fds.call[q], ONE); },
    running: () => (ctx.slot.status & Status.DRIVER_OK) !== 0 && !ctx.slot.needsReset,
    kicks: fds.kick.map((fd, q) => ({ fd, slot: q, isEventfd: true })),
  };
}

/**
 * How often the driver-domain checks that a disk image still has the size it was opened with: often
 * enough to see a cut image before the guest's sequential writes extend it to its size again.
 */
const DISK_WATCH_MS = 100;
/** I/O errors are logged at most this often (the first at once). */
const IO_ERROR_LOG_MS = 1000;

/**
 * Failures of the disk file that the guest is told of (S_IOERR) or cannot be told of (an image cut
 * short under the VM: a read of the hole a write past the new end leaves reads zeros, which the
 * device cannot tell from data) are logged, so they are detected rather than silent: the first I/O
 * error, then a count at most once a second; a shrunk image once per new size.
 */
function watchDisk(index: number, fd: number, size: number, blk: VirtioBlk): void {
  let errors = 0;
  let logged = 0;
  let lastLogAt = 0;
  blk.onIoError = (sector, op, e) => {
    errors++;
    const now = performance.now();
    if (logged && now - lastLogAt < IO_ERROR_LOG_MS) return;
    processLogger().warn(`disk ${index} I/O error: ${op === 'flush' ? 'flush' : `${op} at sector ${sector}`}: ${e.message}` +
      `${errors - logged > 1 ? ` (${errors - logged - 1} more since the last report)` : ''}; the guest got S_IOERR`, { event: 'disk-io-error', disk: index, errors });
    logged = errors;
    lastLogAt = now;
  };
  blk.onFull = (full, ms) => {
    if (full) processLogger().warn(`disk ${index}'s file system is full (ENOSPC): holding the guest's writes and retrying every 100 ms`, { event: 'disk-full', disk: index });
    else processLogger().info(`disk ${index}'s file system has room again: the held writes completed after ${ms.toFixed(0)} ms`, { event: 'disk-room', disk: index, ms: Math.round(ms) });
  };
  let seen = size;
  setInterval(() => {
    let now: number;
    try { now = fs.fstatSync(fd).size; } catch { return; }
    if (now < size && now !== seen) {
      processLogger().warn(`disk ${index} image shrank under the VM from ${size} to ${now} bytes (truncated outside tsvmm): ` +
        'reads past the new end fail, reads of the hole a later write leaves return zeros', { event: 'disk-shrank', disk: index, bytes: now });
    }
    seen = now;
  }, DISK_WATCH_MS).unref();
}

/** How often a device's guest-facing faults (a broken ring, rejected requests) are looked for. */
const DEVICE_WATCH_MS = 100;

/**
 * What the guest did wrong on a device's rings is logged, so a malicious or broken guest driver is
 * detected, not silent: a ring fault that broke a queue (the device set DEVICE_NEEDS_RESET, virtio
 * 1.2 2.1.2; it serves nothing until the guest resets it) once per reset, and malformed requests
 * the device rejected (a descriptor outside guest RAM, a chain loop, a huge length: completed with
 * an error) at most once a second with a count. Only this device is affected; the VM goes on.
 * A device that went DEVICE_NEEDS_RESET also interrupts the guest once (a configuration change),
 * so its driver can reset it (the guest's blk driver does, and resubmits what was in flight).
 */
function watchDevice(index: number, what: string, slot: DeviceSlot, dev: { stats: { badChains: number }; lastError?: string }, queues: Virtqueue[], notify: (q: number) => void): void {
  let reported = false;
  let chains = dev.stats.badChains;
  const breaks = () => queues.reduce((n, q) => n + q.breaks, 0);
  let broke = breaks();
  setInterval(() => {
    // A queue that broke since the last look counts even if the guest already reset the device.
    const b = breaks();
    const broken = slot.needsReset || b > broke;
    broke = b;
    if (broken && !reported) {
      // setNeedsReset raised the configuration-change bit in InterruptStatus; the interrupt itself
      // tells the guest's driver (virtio 1.2 2.1.2: the device SHOULD send a configuration change
      // notification), which answers with a reset.
      notify(0);
      // lastError: the ring fault that broke a queue; none: set at start, for a queue record refused.
      processLogger().warn(`${what} ${index} needs a reset (DEVICE_NEEDS_RESET: ${dev.lastError ? `the guest's ring is malformed: ${dev.lastError}` : 'its queue state was refused'}): it serves nothing until the guest resets it; the VM goes on`, { event: 'device-needs-reset', device: index });
    }
    reported = slot.needsReset;
    const n = dev.stats.badChains;
    if (n > chains) {
      processLogger().warn(`${what} ${index}: rejected ${n - chains} malformed request${n - chains > 1 ? 's' : ''} from the guest (${dev.lastError ?? 'unknown'}): completed with an error; the device goes on`, { event: 'device-bad-request', device: index, count: n - chains });
    }
    chains = n;
  }, DEVICE_WATCH_MS).unref();
}

export function serveBlk(ctx: DeviceContext, d: DeviceEntry): ServedDevice {
  const { fds, notify, running, kicks } = common(ctx, d);
  const disk = ctx.cfg.disks[d.index];
  const large = largeTransferPolicy(ctx.cfg.cpus);
  // cache=none: the supervisor opened the image O_DIRECT; misaligned guest buffers are bounced.
  const direct = disk.cache === 'none' ? dioAlignment(fds.backend) : undefined;
  const io = openBlockBackend(fds.backend, fs.fstatSync(fds.backend).size, disk.readOnly, `tsvmm-disk${d.index}`, { ...large, io: disk.io, direct });
  const offload = large.largeFrom === undefined ? '' : `, transfers ${describeLargeTransfers(large)}`;
  const odirect = direct ? `, O_DIRECT (aligned to ${direct.mem} B in memory, ${direct.offset} B on disk)` : '';
  processLogger().info(`disk ${d.index} I/O: ${io.kind === 'uring' ? `io_uring${offload}` : `thread pool (fs.readv/writev; ${io.why})`}${odirect}`);
  // libuv starts its pool's threads at the first request queued: now, before confinement (a
  // confined driver-domain may not clone).
  if (io.kind === 'threads') fs.fstat(fds.backend, () => undefined);
  const blk = new VirtioBlk(ctx.memory, ctx.slot, io.backend, notify);
  if (ctx.counters) blk.counters = ctx.counters;
  // The limit is the configuration's, so a restarted driver-domain applies it again (with full buckets).
  blk.limiter = RateLimiter.from(disk.rateLimit);
  if (blk.limiter) processLogger().info(`disk ${d.index} rate limit: ${describeRateLimit(disk.rateLimit)}`);
  watchDisk(d.index, fds.backend, io.backend.size, blk);
  watchDevice(d.index, 'disk', ctx.slot, blk, [blk.vq], notify);
  const polled = [...kicks];
  let reap: (() => number) | undefined;
  let uringDisk: ServedDevice['uringDisk'];
  const b = io.backend;
  if (isBatched(b) && b.completionFd >= 0) {
    reap = () => b.reap();
    polled.push({ fd: b.completionFd, slot: SLOT_COMPLETION, isEventfd: true });
    if (b instanceof UringBlockBackend) uringDisk = { be: b, reap };
  }
  const poll = new BusyPoll();
  // While it polls it also reaps: I/O that completes off this thread (io_uring workers) is
  // published then, not when the poll ends and the completion eventfd is read.
  const follow = () => poll.follow(blk.vq, () => blk.kick(), true, reap);
  return {
    polled, running, uringDisk,
    activate: () => blk.activate(),
    deactivate: () => blk.vq.deactivate(),
    resetSinceActivate: () => blk.vq.isActive && blk.vq.progress.queueSize === 0,
    onEvent: (slot, live) => {
      // I/O completions: reap the whole batch, whatever the device state.
      if (slot === SLOT_COMPLETION) reap?.();
      else if (live) blk.kick();
      if (live) follow();
    },
  };
}

/** How often the driver-domain checks that a net device's TAP still exists. */
const TAP_WATCH_MS = 1000;

/**
 * A TAP deleted on the host under the VM (ip link del, a network manager) leaves the driver-domain's
 * fd detached: reads and writes fail with EBADFD and no frame arrives. Logged once, so it is
 * detected, not silent; the NIC carries nothing from then on (its frames are dropped), the other
 * devices and the guest go on. A TAP made again with the same name in the supervisor's network
 * namespace is reattached by the supervisor (supervisor/tap-reattach.ts: a new driver-domain takes
 * over with it); elsewhere this fd stays detached.
 */
function watchTap(index: number, fd: number, tap: TapBackend): void {
  const name = tapAttachedName(fd);
  if (name === undefined) return;
  let gone = false;
  setInterval(() => {
    const now = tapAttachedName(fd);
    if (now === '' && !gone) {
      gone = true;
      processLogger().warn(`net ${index}: its TAP ${name} vanished under the VM (deleted on the host; the fd is detached, EBADFD): ` +
        `the NIC carries no traffic (${tap.dropped} frames dropped so far); the disk and the guest go on; a TAP made again with that name on the host is reattached`, { event: 'tap-vanished', device: index, tap: name });
    }
  }, TAP_WATCH_MS).unref();
}

export function serveNet(ctx: DeviceContext, d: DeviceEntry): ServedDevice {
  const { fds, notify, running, kicks } = common(ctx, d);
  const tap = new TapBackend(fds.backend);
  processLogger().info(`net ${d.index} TX: ${tap.txMode}`);
  const net = new VirtioNet(ctx.memory, ctx.slot, tap, notify);
  watchDevice(d.index, 'net', ctx.slot, net, [net.rx, net.tx], notify);
  if (ctx.counters) net.counters = ctx.counters;
  // Each direction has its own buckets with the configured limit (applied again by a restarted driver-domain).
  const limit = ctx.cfg.nets[d.index - ctx.cfg.disks.length].rateLimit;
  net.txLimiter = RateLimiter.from(limit);
  net.rxLimiter = RateLimiter.from(limit);
  if (net.txLimiter) processLogger().info(`net ${d.index} rate limit, each way: ${describeRateLimit(limit)}`);
  /** Deliver every frame waiting on the TAP; returns how many reached the guest. */
  const drainTap = () => {
    const rx = net.stats.rxFrames;
    try {
      net.batch(() => tap.drain());
    } catch (e) {
      // A detached TAP (deleted under the VM: EBADFD) or another read error: this NIC's problem
      // only (watchTap logs a vanished TAP); the frames read before it were delivered.
      net.lastError = (e as Error).message;
    }
    return net.stats.rxFrames - rx;
  };
  watchTap(d.index, fds.backend, tap);
  const poll = new BusyPoll();
  return {
    polled: [...kicks, { fd: fds.backend, slot: SLOT_TAP, isEventfd: false }],
    running,
    activate: () => net.activate(),
    deactivate: () => { net.rx.deactivate(); net.tx.deactivate(); },
    resetSinceActivate: () => [net.rx, net.tx].some((q) => q.isActive && q.progress.queueSize === 0),
    onEvent: (slot, live) => {
      if (slot === SLOT_TAP) {
        // A TAP is edge-triggered: always drain it (the device drops what it cannot deliver).
        // Only frames delivered to the guest are answered (on TX): poll for that answer, and
        // drain the TAP meanwhile: in a stream the sender's next frames arrive then, and taking
        // them (instead of sleeping until the guest's TX kick or the TAP wakes this process) kept
        // this CPU from idling between the two (UDP echo stream: idle ~90-170 -> ~20-50 ms/s,
        // +10-15% MB/s). A TX kick is not followed by more TX soon: no poll after it.
        if (drainTap() > 0 && live) poll.follow(net.tx, () => net.kickTx(), false, drainTap);
      } else if (live) {
        if (slot === 0) net.kickRx(); else net.kickTx();
      }
    },
  };
}
