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
import { native, poller } from '../native/kvm';
import type { NativePidfd } from '../contracts/pidfd';
import { ComponentMessage, VmConfig } from '../proto';
import { componentConfig } from '../contracts/component-config';
import { toSupervisor, watchSupervisor } from '../contracts/orphan';
import { Component, HEARTBEAT_MS, mapDevicePage, StatePage } from '../contracts/state-page';
import { mapGuestRam } from '../contracts/guest-ram';
import { deviceList } from '../contracts/device-list';
import { FD } from '../contracts/fds';
import { ControlPage, DeviceCounters } from '../contracts/control-page';
import { keeper } from '../contracts/snapshot';
import { confineSelf, keeperSeccomp } from '../contracts/confinement';
import { warmUpBlk } from './warm-up';
import { ServedDevice, serveBlk, serveNet, SLOT_COMPLETION, TAG_SLOTS, tagOf } from './served-device';
import { componentLogger } from '../contracts/log';
import { startNode, startPhase } from '../contracts/start-trace';
import { trimMallocOnceSettled } from '../contracts/malloc-trim';

const pollFd = native as unknown as Pick<NativePidfd, 'pollIn'>;

/** This process's log (contracts/log.ts): stderr and the VM's log file. */
const log = componentLogger('driver-domain');

/** To the supervisor: over IPC, or to the one that adopted us if it died (recovery/orphan.ts). */
function send(msg: ComponentMessage): void {
  toSupervisor(msg);
}

/**
 * `standbyFor`: a warm standby (tsvmm run --standby) for the driver-domain with
 * that pid. It maps RAM and the state page and constructs every device, then
 * blocks on the primary's pidfd; when the primary is gone it validates the
 * page, registers the kick fds and re-attaches exactly as a cold restart does.
 */
function serve(cfg: VmConfig, standbyFor?: number): void {
  // Before any I/O is set up and before confinement (a clone): a process that holds this one's
  // address space, so this one's death (what a standby and the supervisor wait for) does not wait
  // for that address space's teardown, milliseconds of CPU (native/kvm/keeper.c).
  const holder = keeper.mmHoldStart(keeperSeccomp());
  if (holder > 0) process.on('exit', () => keeper.mmHoldRelease());
  else log.warn(`no address-space holder (errno ${-holder}): this driver-domain's death waits for its teardown`);
  const ram = mapGuestRam(FD.RAM, cfg.memBytes);
  const page = mapDevicePage(FD.STATE);
  const control = ControlPage.tryMap(FD.STATE); // metrics: request counters per device (contracts/control-page.ts)
  const checkPage = () => {
    const report = page.validate();
    if (report.ok || report.tornDevices.length > 0) return;
    // A queue's record that does not check (its in-flight table, its registers) fails only its
    // device: DEVICE_NEEDS_RESET (virtio 1.2 2.1.2), which the guest's driver answers with a reset
    // that starts the queue afresh; the other devices and the VM go on. Anything else (the header,
    // a device's identity) is the whole page's, and refused.
    const perDevice = new Map<number, string[]>();
    const whole: string[] = [];
    for (const e of report.errors) {
      const m = /^device (\d+): (queue \d+: .*)$/.exec(e);
      if (m) perDevice.set(Number(m[1]), [...(perDevice.get(Number(m[1])) ?? []), m[2]]);
      else whole.push(e);
    }
    if (whole.length) throw new Error(`device state page is corrupt: ${report.errors.join('; ')}`);
    for (const [i, errs] of perDevice) {
      if (!page.device(i).needsReset) page.device(i).setNeedsReset();
      log.warn(`device ${i}'s queue record is corrupt (${errs.slice(0, 3).join('; ')}): the device needs a reset (DEVICE_NEEDS_RESET); the VM goes on`, { event: 'device-needs-reset', device: i });
    }
  };
  if (standbyFor === undefined) checkPage();

  const devices: ServedDevice[] = deviceList(cfg).map((d) => {
    const ctx = { cfg, memory: ram.memory, slot: page.device(d.index), counters: control ? new DeviceCounters(control, d.index) : undefined };
    return d.kind === 'blk' ? serveBlk(ctx, d) : serveNet(ctx, d);
  });
  const active = devices.map(() => false);
  /** Whether device i is live now, (de)activating it as its driver started or reset it. */
  const ensure = (i: number): boolean => {
    const dev = devices[i];
    if (!dev.running()) {
      if (active[i]) { dev.deactivate(); active[i] = false; }
      return false;
    }
    if (!active[i]) { dev.activate(); active[i] = true; }
    else if (dev.resetSinceActivate()) {
      // Reset and set up again between two of our events (a driver's reset path does not kick):
      // bind to the rings it set up now.
      dev.deactivate();
      dev.activate();
    }
    return true;
  };
  const attach = () => {
    poller.pollerStart((tag) => {
      const i = Math.floor(tag / TAG_SLOTS);
      const slot = tag % TAG_SLOTS;
      if (i >= devices.length) return;
      devices[i].onEvent(slot, slot === SLOT_COMPLETION ? active[i] : ensure(i));
    });
    devices.forEach((dev, i) => { for (const p of dev.polled) poller.pollerAdd(p.fd, tagOf(i, p.slot), p.isEventfd); });
  };

  const activate = (warm: boolean, diedNs = 0n) => {
    // Before the first guest request (a standby already is: below).
    confineSelf('driver-domain');
    const t0 = process.hrtime.bigint();
    if (warm) checkPage();
    const t1 = process.hrtime.bigint();
    attach();
    const t2 = process.hrtime.bigint();
    // Re-attach: anything live when a previous driver-domain died is recovered now.
    devices.forEach((_, i) => ensure(i));
    const resumedNs = process.hrtime.bigint();
    if (warm && log.enabled('debug')) {
      const ms = (a: bigint, b: bigint) => (Number(b - a) / 1e6).toFixed(2);
      log.debug(`standby took over: death seen -> activate ${ms(diedNs, t0)} ms, page check ${ms(t0, t1)} ms, ` +
        `poller + fds ${ms(t1, t2)} ms, re-attach ${ms(t2, resumedNs)} ms (monotonic death seen ${diedNs} ns)`);
    }
    setInterval(() => page.beat(Component.DriverDomain), HEARTBEAT_MS);
    page.beat(Component.DriverDomain);
    serving = true;
    send({ ready: { component: 'driver-domain', pid: process.pid, warm, diedNs: Number(diedNs), resumedNs: Number(resumedNs) } });
    trimMallocOnceSettled();
    if (!warm) startPhase('driver-domain', 'serving', { cpu: false });
  };
  // Warm the block path's JIT up while no guest I/O can be waiting for it: at boot (no device live
  // yet) or in a standby, never in a cold restart under a running guest (that would delay recovery).
  // At boot the guest does not wait for it: see below.
  // At boot it ends once the guest kicks any queue (a request waits in its eventfd: the guest's
  // first I/O would otherwise wait the whole warm-up, ~100-250 ms of CPU); the guest's own
  // requests finish warming the code. A standby's kick eventfds are the live driver-domain's: it
  // warms up whole.
  const warmUp = (boot: boolean) => {
    const n = Number(process.env.TSVMM_BLK_WARMUP ?? 4096); // requests; 0 turns the warm-up off
    if (!(n > 0)) return;
    const kicks = devices.flatMap((dev) => dev.polled.filter((p) => p.slot < SLOT_COMPLETION).map((p) => p.fd));
    const guestWaiting = boot ? () => kicks.some((fd) => pollFd.pollIn(fd, 0) === 1) : undefined;
    for (const { be, reap } of devices.flatMap((dev) => dev.uringDisk ?? [])) {
      const r = warmUpBlk(be, reap, n, guestWaiting);
      log.debug(`block path warm-up ${!r ? 'skipped' : `${r.ms.toFixed(1)} ms, ${r.requests} requests${r.cut ? ' (ended early: the guest kicked)' : ''}`}`);
      if (r?.cut) break;
    }
  };
  if (standbyFor === undefined) {
    startPhase('driver-domain', 'devices built');
    if (!devices.some((dev) => dev.running())) {
      // A boot: the vmm starts the guest at our first beat (vmm/main.ts whenDriverDomainReady). The
      // devices are built and the page checked, so it beats now, before the warm-up (~100-300 ms of
      // CPU, the longest part of a boot): the guest boots meanwhile, and a kick it sends first waits
      // in its eventfd until activate() below attaches the queues, as in a cold restart. The warm-up
      // runs on this process's private virtqueue and never touches a queue the guest drives. It
      // starts once the vmm beats (the guest runs): on a small host it would otherwise take the CPU
      // the vmm's own start needs.
      page.beat(Component.DriverDomain);
      afterVmmBeat(page, () => {
        try {
          startPhase('driver-domain', 'the vmm runs the guest: warm-up');
          warmUp(true);
          startPhase('driver-domain', 'warm-up done');
          activate(false);
        } catch (e) {
          send({ fatal: { message: `driver-domain: ${(e as Error).message}` } });
          setTimeout(() => process.exit(1), 20);
        }
      });
      return;
    }
    activate(false);
    return;
  }
  warmUp(false);
  page.validate(); // once now, so the takeover's check runs compiled code
  confineSelf('driver-domain');
  send({ ready: { component: 'driver-domain', pid: process.pid, standby: true } });
  trimMallocOnceSettled();
  setImmediate(() => activate(true, waitForDeath(standbyFor)));
}

/** How long a booting driver-domain waits for the vmm's first beat before it warms up anyway. */
const VMM_BEAT_WAIT_MS = 3000;

/** Calls `then` once the vmm beats (the guest runs), polling every millisecond; after VMM_BEAT_WAIT_MS anyway. */
function afterVmmBeat(page: StatePage, then: () => void): void {
  const t0 = performance.now();
  const check = () => {
    if (page.heartbeat(Component.Vmm) !== 0 || performance.now() - t0 >= VMM_BEAT_WAIT_MS) then();
    else setTimeout(check, 1);
  };
  check();
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

/** Serving the guest's devices (a standby: it took over). */
let serving = false;

function main(): void {
  exitOnUncaughtException('driver-domain');
  const cfg = componentConfig();
  if (!cfg) {
    process.stderr.write('tsvmm driver-domain: this process is started by `tsvmm run`, not by hand\n');
    process.exit(2);
  }
  const standbyFor = process.env.TSVMM_STANDBY_FOR;
  if (!standbyFor) { startNode('driver-domain'); startPhase('driver-domain', 'modules loaded (main)'); }
  log.debug(`started${standbyFor ? ` as the standby of pid ${standbyFor}` : ''}, ${cfg.disks.length + cfg.nets.length} device(s)`, { standby: standbyFor !== undefined });
  // Our supervisor dying is not the guest's end: a new one adopts us (recovery/orphan.ts).
  watchSupervisor({
    role: 'driver-domain', name: cfg.name,
    adoptable: () => serving,
    giveUp: (why) => {
      if (serving) log.error(`${why}: exiting`);
      process.exit(serving ? 1 : 0);
    },
  });
  try {
    serve(cfg, standbyFor ? Number(standbyFor) : undefined);
    installTestHooksIfAsked('driver-domain');
  } catch (e) {
    send({ fatal: { message: `driver-domain: ${(e as Error).message}` } });
    setTimeout(() => process.exit(1), 20);
  }
}

main();
