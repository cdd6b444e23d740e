/**
 * The driver-domain process: serves the VM's virtio devices. It maps guest
 * RAM and the device state page, waits on each queue's kick eventfd (KVM
 * signals them straight from the guest's QueueNotify write), does the I/O
 * on the disk files and TAPs the supervisor holds, and interrupts the guest
 * through each queue's irqfd. It never opens /dev/kvm and is never on a
 * vCPU's path.
 *
 * On start it re-attaches to whatever the state page says: queues that were
 * live are re-activated, which resubmits in-flight requests in order and
 * signals every queue once (driver-domain recovery).
 */
import { exitOnUncaughtException, installTestHooksIfAsked } from '../contracts/process'; // first: no debugger, before anything else runs
import * as fs from 'fs';
import { native, poller } from '../native/kvm';
import { ComponentMessage, ComponentMessageCodec, VmConfig, VmConfigCodec } from '../proto';
import { Component, HEARTBEAT_MS, mapDevicePage } from '../contracts/state-page';
import { Status } from '../contracts/virtio-mmio-layout';
import { VirtioBlk } from '../virtio/virtio-blk';
import { VirtioNet } from '../virtio/virtio-net';
import { UringBlockBackend, describeLargeTransfers, isBatched, largeTransferPolicy, openBlockBackend } from '../virtio/block-backend';
import { mapGuestRam } from '../contracts/guest-ram';
import { deviceList } from '../contracts/device-list';
import { deviceFds, FD } from '../contracts/fds';
import { TapBackend } from '../virtio/tap-backend';
import { warmUpBlk } from './warm-up';
import { BusyPoll } from './busy-poll';
import { ControlPage, DeviceCounters } from '../contracts/control-page';

/**
 * Poller tags: one fd of device `index` per slot. Slots 0..13 are its queues' kick eventfds,
 * 14 the disk's I/O completion eventfd, 15 the TAP.
 */
const TAG_SLOTS = 16;
const SLOT_COMPLETION = 14;
const SLOT_TAP = 15;
const tagOf = (index: number, slot: number): number => index * TAG_SLOTS + slot;
import { keeper } from '../contracts/snapshot';

const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
const ONE_IOV = [new Uint8Array(ONE)];
/** The addon's non-throwing writev (native/kvm/fdio.cc), looked up once: the irqfd write on every signal. */
const fdWritev = native.fdWritev.bind(native);

function send(msg: ComponentMessage): void {
  process.send?.({ pb: Buffer.from(ComponentMessageCodec.encode(msg)).toString('base64') });
}

interface Served {
  activate(): void;
  kick(queue: number): void;
  running(): boolean;
  deactivate(): void;
  /** After event `q` (a queue, 14 I/O completions, 15 TAP frames) was served: busy-poll for the guest's answer (driver-domain/busy-poll.ts). */
  follow(q: number): void;
}

/**
 * `standbyFor`: a warm standby (tsvmm run --standby) for the driver-domain with
 * that pid. It maps RAM and the state page and constructs every device, then
 * blocks on the primary's pidfd; when the primary is gone it validates the
 * page, registers the kick fds and re-attaches exactly as a cold restart does.
 */
function serve(cfg: VmConfig, standbyFor?: number): void {
  const ram = mapGuestRam(FD.RAM, cfg.memBytes);
  const page = mapDevicePage(FD.STATE);
  const control = ControlPage.tryMap(FD.STATE); // metrics: request counters per device (contracts/control-page.ts)
  const checkPage = () => {
    const report = page.validate();
    if (!report.ok && report.tornDevices.length === 0) throw new Error(`device state page is corrupt: ${report.errors.join('; ')}`);
  };
  if (standbyFor === undefined) checkPage();
  const registrations: (() => void)[] = [];

  const served: Served[] = [];
  const active: boolean[] = [];
  /** io_uring disks and their busy poll's reaper, for the JIT warm-up (driver-domain/warm-up.ts). */
  const uringDisks: { be: UringBlockBackend; reap: () => number }[] = [];
  const ensure = (i: number): boolean => {
    const s = served[i];
    if (!s.running()) {
      if (active[i]) { s.deactivate(); active[i] = false; }
      return false;
    }
    if (!active[i]) { s.activate(); active[i] = true; }
    return true;
  };
  const startPoller = () => poller.pollerStart((tag) => {
    const i = Math.floor(tag / TAG_SLOTS);
    const q = tag % TAG_SLOTS;
    if (i >= served.length) return;
    // Block I/O completions (io_uring eventfd): reap the whole batch, whatever the device state.
    if (q === SLOT_COMPLETION) {
      ioDone.get(i)?.();
      if (active[i]) served[i].follow(q);
      return;
    }
    const live = ensure(i);
    // A TAP is edge-triggered: always drain it (the device drops what it cannot deliver).
    if (q === SLOT_TAP) {
      const drain = tapDrains.get(i);
      if (!drain) return;
      // The guest answers on TX: poll for it (and keep draining the TAP meanwhile, see follow below).
      if (drain() > 0 && live) served[i].follow(q);
    } else if (live) {
      served[i].kick(q);
      served[i].follow(q);
    }
  });
  for (const d of deviceList(cfg)) {
    const slot = page.device(d.index);
    const fds = deviceFds(d.index, d.queues);
    const notify = (q: number) => { if (fdWritev(fds.call[q], ONE_IOV) < 0) fs.writeSync(fds.call[q], ONE); };
    const running = () => (slot.status & Status.DRIVER_OK) !== 0 && !slot.needsReset;
    if (d.kind === 'blk') {
      const disk = cfg.disks[d.index];
      const size = fs.fstatSync(fds.backend).size;
      const large = largeTransferPolicy(cfg.cpus);
      const io = openBlockBackend(fds.backend, size, disk.readOnly, `tsvmm-disk${d.index}`, large);
      const offload = large.largeFrom === undefined ? '' : `, transfers ${describeLargeTransfers(large)}`;
      process.stderr.write(`tsvmm: driver-domain: disk ${d.index} I/O: ${io.kind === 'uring' ? `io_uring${offload}` : `thread pool (fs.readv/writev; ${io.why})`}\n`);
      const blk = new VirtioBlk(ram.memory, slot, io.backend, notify);
      let reap: (() => number) | undefined;
      if (isBatched(io.backend) && io.backend.completionFd >= 0) {
        const b = io.backend;
        reap = () => b.reap();
        ioDone.set(d.index, reap);
        registrations.push(() => poller.pollerAdd(b.completionFd, tagOf(d.index, SLOT_COMPLETION), true));
        if (b instanceof UringBlockBackend) uringDisks.push({ be: b, reap });
      }
      if (control) blk.counters = new DeviceCounters(control, d.index);
      const poll = new BusyPoll();
      served.push({
        activate: () => { blk.activate(); }, kick: () => { blk.kick(); }, running, deactivate: () => blk.vq.deactivate(),
        // While it polls it also reaps: I/O that completes off this thread (io_uring workers) is
        // published then, not when the poll ends and the completion eventfd is read.
        follow: () => poll.follow(blk.vq, () => blk.kick(), true, reap),
      });
    } else {
      const tap = new TapBackend(fds.backend);
      process.stderr.write(`tsvmm: driver-domain: net ${d.index} TX: ${tap.txMode}\n`);
      const net = new VirtioNet(ram.memory, slot, tap, notify);
      /** Deliver every frame waiting on the TAP; returns how many reached the guest. */
      const drainTap = () => {
        const rx = net.stats.rxFrames;
        net.batch(() => tap.drain());
        return net.stats.rxFrames - rx;
      };
      if (control) net.counters = new DeviceCounters(control, d.index);
      const poll = new BusyPoll();
      served.push({
        activate: () => { net.activate(); },
        kick: (q) => { if (q === 0) net.kickRx(); else net.kickTx(); },
        running,
        deactivate: () => { net.rx.deactivate(); net.tx.deactivate(); },
        // Only frames delivered to the guest are answered (on TX); a TX kick is not followed by more TX soon.
        // While it waits for the answer it also drains the TAP: in a stream the sender's next frames
        // arrive meanwhile, and taking them then (instead of sleeping until the guest's TX kick or the
        // TAP wakes this process) kept this CPU from idling between the two (UDP echo stream: idle
        // ~90-170 -> ~20-50 ms/s, +10-15% MB/s).
        follow: (q) => { if (q === SLOT_TAP) poll.follow(net.tx, () => net.kickTx(), false, drainTap); },
      });
      registrations.push(() => poller.pollerAdd(fds.backend, tagOf(d.index, SLOT_TAP), false));
      tapDrains.set(d.index, drainTap);
    }
    registrations.push(() => fds.kick.forEach((fd, q) => poller.pollerAdd(fd, tagOf(d.index, q), true)));
  }

  const activate = (warm: boolean, diedNs = 0n) => {
    const t0 = process.hrtime.bigint();
    if (warm) checkPage();
    const t1 = process.hrtime.bigint();
    startPoller();
    for (const r of registrations) r();
    const t2 = process.hrtime.bigint();
    // Re-attach: anything live when a previous driver-domain died is recovered now.
    served.forEach((_, i) => ensure(i));
    const resumedNs = process.hrtime.bigint();
    if (process.env.TSVMM_RESTORE_DEBUG && warm) {
      const ms = (a: bigint, b: bigint) => (Number(b - a) / 1e6).toFixed(2);
      process.stderr.write(`tsvmm driver-domain: standby took over: death seen -> activate ${ms(diedNs, t0)} ms, page check ${ms(t0, t1)} ms, ` +
        `poller + fds ${ms(t1, t2)} ms, re-attach ${ms(t2, resumedNs)} ms\n`);
    }
    setInterval(() => page.beat(Component.DriverDomain), HEARTBEAT_MS);
    page.beat(Component.DriverDomain);
    send({ ready: { component: 'driver-domain', pid: process.pid, warm, diedNs: Number(diedNs), resumedNs: Number(resumedNs) } });
  };
  // Warm the block path's JIT up while no guest I/O can be waiting for it: at boot (no device live
  // yet) or in a standby, never in a cold restart under a running guest (that would delay recovery).
  const warmUp = () => {
    const n = Number(process.env.TSVMM_BLK_WARMUP ?? 4096); // requests; 0 turns the warm-up off
    if (!(n > 0)) return;
    for (const { be, reap } of uringDisks) {
      const ms = warmUpBlk(be, reap, n);
      if (process.env.TSVMM_RESTORE_DEBUG) process.stderr.write(`tsvmm driver-domain: block path warm-up ${ms < 0 ? 'skipped' : `${ms.toFixed(1)} ms`}\n`);
    }
  };
  if (standbyFor === undefined) {
    if (!served.some((s) => s.running())) warmUp();
    activate(false);
    return;
  }
  warmUp();
  page.validate(); // once now, so the takeover's check runs compiled code
  send({ ready: { component: 'driver-domain', pid: process.pid, standby: true } });
  setImmediate(() => activate(true, waitForDeath(standbyFor)));
}

/**
 * Blocks until process `pid` has exited (its pidfd is readable: every thread
 * is gone, so no I/O of its can still land in guest RAM). Returns when that
 * was seen (CLOCK_MONOTONIC ns). Exits if the supervisor goes away.
 */
function waitForDeath(pid: number): bigint {
  const fd = keeper.pidfdOpen(pid);
  if (fd < 0) return process.hrtime.bigint(); // ESRCH: already gone
  const ppid = process.ppid;
  for (;;) {
    if (keeper.pollIn(fd, 1000) === 1) return process.hrtime.bigint();
    if (process.ppid !== ppid) process.exit(0);
  }
}

/** Per net device index: drain its TAP into the guest (frames delivered). */
const tapDrains = new Map<number, () => number>();
const ioDone = new Map<number, () => number>();

function main(): void {
  exitOnUncaughtException('driver-domain');
  const b64 = process.env.TSVMM_CONFIG;
  if (!b64) {
    process.stderr.write('tsvmm driver-domain: this process is started by `tsvmm run`, not by hand\n');
    process.exit(2);
  }
  try {
    const standbyFor = process.env.TSVMM_STANDBY_FOR;
    serve(VmConfigCodec.decode(Buffer.from(b64, 'base64')), standbyFor ? Number(standbyFor) : undefined);
    installTestHooksIfAsked('driver-domain');
  } catch (e) {
    send({ fatal: { message: `driver-domain: ${(e as Error).message}` } });
    setTimeout(() => process.exit(1), 20);
  }
}

main();
