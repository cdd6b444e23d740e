/**
 * The vmm process: owns /dev/kvm. Builds the VM from the VmConfig the
 * supervisor passed (guest RAM and state pages come in as fds), loads the
 * kernel, starts one worker thread per vCPU and reports the guest's exit.
 */
import { exitOnUncaughtException, installTestHooksIfAsked } from '../contracts/process'; // first: no debugger, before anything else runs
// Next: starts the vCPU threads, so their boot overlaps the loading of everything below.
import { releaseUnusedVcpuThreads, vcpuThread } from './early-vcpu-threads';
import * as fs from 'fs';
import { ComponentMessage, SnapshotRequest, SupervisorMessage, SupervisorMessageCodec, VmConfig } from '../proto';
import { captureSnapshot, prepareCapture, writeSnapshotFiles } from '../contracts/snapshot-dir';
import { componentConfig } from '../contracts/component-config';
import { toSupervisor, watchSupervisor } from '../contracts/orphan';
import { abi, native, poller } from '../native/kvm';
import { Kvm } from '../kvm/system';
import { Vm } from '../kvm/vm';
import type { kvmBootState } from '../boot/kernel';
import { mapGuestRam } from '../contracts/guest-ram';
import { deviceFds, FD } from '../contracts/fds';
import { deviceList, virtioCmdline } from '../contracts/device-list';
import { irqfdGsi, IrqRoutes } from './irq-routes';
import { MmioReg } from '../contracts/virtio-mmio-layout';
import { PLATFORM_PAGE_SIZE, PlatformPage } from '../contracts/platform-page';
import { SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT } from './platform';
import { Serial } from './serial';
import { GedInterrupt } from './ged';
import type { VcpuThreadData, VcpuThreadMessage } from './vcpu-thread';
import { Vcpu } from '../kvm/vcpu';
import { vcpuCpuid } from './cpuid';
import { describeRepairs, keeper, RestoreResult, restoreFailure, SnapshotError, SnapshotView, SnapState } from '../contracts/snapshot';
import { EXIT_NOT_NEEDED } from '../contracts/exit-codes';
import { Component, HEARTBEAT_MS, mapDevicePage, StatePage } from '../contracts/state-page';
import { msrIndexList, probeMsrs } from './restore';
import { ControlPage } from '../contracts/control-page';
import { PauseControl } from './pause';
import { CoalescedRing, coalescedPioSupported, RingWatch } from './coalesced';
import { RUN } from '../kvm/run';
import { confineSelf, keeperSeccomp } from '../contracts/confinement';
import { componentLogger } from '../contracts/log';
import { START_DEBUG, startNode, startPhase } from '../contracts/start-trace';
import { trimMallocOnceSettled } from '../contracts/malloc-trim';

/** This process's log (contracts/log.ts): stderr and the VM's log file. */
const log = componentLogger('vmm');

/** Where KVM puts its real-mode TSS and identity map (below the LAPIC, above the IOAPIC). */
const KVM_TSS_ADDR = 0xfffbd000;
const KVM_IDENTITY_MAP_ADDR = 0xfffbc000;
/** How long a fresh guest waits for the driver-domain to serve its devices before it starts anyway. */
const DEVICE_WAIT_MS = 10_000;

/** To the supervisor: over IPC, or to the one that adopted us if it died (recovery/orphan.ts). */
function send(msg: ComponentMessage): void {
  toSupervisor(msg);
}

/** The guest runs in this vmm (a standby: it took over). */
let tookOver = false;

/** How this vmm starts: a fresh boot, a cold restore (it replaces a dead vmm), or a warm standby. */
export type VmmMode = 'boot' | 'restore' | 'standby';

/**
 * Builds the VM and starts it. `restore`: this vmm replaces one that died;
 * instead of loading the kernel it restores the state its keeper saved in the
 * snapshot memfd into a fresh VM on the same guest RAM (contracts/snapshot.ts,
 * vmm/restore.ts), replays a guest write that was in flight, and resumes.
 * `standby` (tsvmm run --standby): builds everything a restore needs (VM,
 * irqchip, PIT, memory slots, ioeventfds, vCPUs with their CPUID, the MSR
 * list, vCPU threads parked on a flag), reports itself ready, then blocks on
 * the snapshot's futex until the primary's keeper has saved it; it claims
 * that generation and resumes the guest (the warm path, supervisor/supervisor.ts).
 */
export function buildAndRun(cfg: VmConfig, mode: VmmMode = 'boot'): void {
  const restore = mode !== 'boot';
  const snapView = SnapshotView.map(FD.SNAPSHOT, cfg.cpus);
  snapView.checkLayout(cfg.cpus, mode === 'restore');
  const tModules = performance.now();
  const kvm = passedFd(FD.KVM) ? Kvm.fromFd(FD.KVM) : Kvm.open();
  const vm = new Vm(kvm.createVm());
  vm.setTssAddr(KVM_TSS_ADDR);
  vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDR);
  vm.createIrqchip();
  vm.createPit2();

  const ram = mapGuestRam(FD.RAM, cfg.memBytes);
  ram.slots.forEach((s, i) => vm.setUserMemoryRegion(i, s.gpa, s.host));

  let boot: ReturnType<typeof kvmBootState> | undefined;
  const kernel = restore ? undefined : readPassed(FD.KERNEL, cfg.kernel);
  // Virtio devices: kicks go from KVM straight to the driver-domain (ioeventfd), completions
  // straight back (irqfd); the vmm only emulates the transport registers. ioeventfds are per VM, so
  // a standby registers them up front; irqfds only once its VM holds the guest's state (an irqfd
  // registered on an eventfd with a pending count injects at once, and the restored IRQCHIP state
  // would overwrite that interrupt).
  const devices = deviceList(cfg);
  for (const d of devices) {
    const fds = deviceFds(d.index, d.queues);
    fds.kick.forEach((fd, q) => vm.ioeventfd({ addr: d.base + MmioReg.QueueNotify, len: 4, fd, datamatch: q }));
  }
  // Each device's irqfd has a GSI of its own, routed to its IOAPIC pin until the guest has programmed
  // the pin, then to the MSI that pin sends (vmm/irq-routes.ts).
  const irqRoutes = new IrqRoutes(vm, devices);
  const irqfds = devices.flatMap((d) => deviceFds(d.index, d.queues).call.map((fd) => ({ fd, gsi: irqfdGsi(d) })));

  // The guest learns its CPUs and devices from ACPI (as Linux does) and the command line.
  if (!restore) {
    // Loaded only to boot: a restarting vmm (on the guest's critical path) never needs them.
    const { kvmBootState, loadKernel } = require('../boot/kernel') as typeof import('../boot/kernel');
    const { buildAcpi } = require('./acpi') as typeof import('./acpi');
    const rsdp = buildAcpi(ram.memory, {
      cpus: cfg.cpus, virtio: devices.map((d) => ({ base: d.base, gsi: d.gsi })),
      sleep: { controlPort: SLEEP_CONTROL_PORT, statusPort: SLEEP_STATUS_PORT },
    });
    const cmdline = [cfg.cmdline, virtioCmdline(devices)].filter((s) => s).join(' ');
    // A bzImage (64-bit boot protocol) or a PVH ELF: boot/kernel.ts picks the path by magic.
    const initrd = cfg.initrd ? readPassed(FD.INITRD, cfg.initrd) : undefined;
    boot = kvmBootState(loadKernel(ram.memory, kernel!, { cmdline, initrd, memBytes: cfg.memBytes, rsdp }).cpu);
  }

  const page = new PlatformPage(native.mmap(FD.STATE, PLATFORM_PAGE_SIZE, 0, true));
  page.check();
  const devPage = mapDevicePage(FD.STATE);

  const supported = kvm.supportedCpuid();
  const counters = new SharedArrayBuffer(64 * 8);
  let finished = false;
  const finish = (msg: ComponentMessage, code: number) => {
    if (finished) return;
    finished = true;
    keeper.keeperStop(); // the guest is done: its keeper exits without saving
    send(msg);
    // Give the IPC message a moment to flush, then stop every vCPU thread with the process.
    setTimeout(() => process.exit(code), 20);
  };
  const vcpuFds = Array.from({ length: cfg.cpus }, (_, id) => vm.createVcpu(id));
  const mmapSize = kvm.vcpuMmapSize();
  // Every vCPU gets its CPUID and its boot (or restored) state before the keeper is armed and
  // before any vCPU runs, so the keeper never saves a half-built vCPU.
  const vcpus = vcpuFds.map((fd, id) => new Vcpu(fd, id, mmapSize));
  for (const v of vcpus) v.setCpuid(vcpuCpuid(supported, v.id, cfg.cpus, v.tscKhz()));
  if (boot) {
    vcpus[0].setSregs(boot.sregs);
    vcpus[0].setRegs(boot.regs);
  }
  // A cold restore claims the saved snapshot only now: the VM above is built while the keeper saves
  // it (after a crash) or while the supervisor still reads guest RAM in (tsvmm run --restore).
  const tBuiltVm = performance.now();
  const claimed = mode === 'restore' ? claimSnapshot(snapView, cfg.cpus) : undefined;
  const tSnap = performance.now();
  // The MSRs the keeper saves: a restore reuses the list its snapshot was saved with (no re-probe).
  const msrs = claimed !== undefined ? snapView.savedMsrs() : probeMsrs(vcpus[0], msrIndexList(kvm.fd), abi('snap_TSVMM_MAX_MSRS'));

  // The vCPU threads (started first thing, vmm/early-vcpu-threads.ts) get their vCPUs now and park
  // on `go` until the keeper is armed.
  const go = new Int32Array(new SharedArrayBuffer(4));
  // TSVMM_NO_RECOVERY=1 (bench/recovery's overhead row only): no keeper, no journal, no heartbeat.
  const recovery = process.env.TSVMM_NO_RECOVERY !== '1';
  // COM1's THR through KVM's coalesced ring (vmm/coalesced.ts): one vCPU only, where KVM can.
  // TSVMM_NO_COALESCED=1 turns it off (bench/exits' before/after rows).
  let ring: CoalescedRing | undefined;
  if (process.env.TSVMM_NO_COALESCED !== '1' && cfg.cpus === 1) {
    if (coalescedPioSupported(vm.fd)) ring = CoalescedRing.map(vcpus[0].fd);
    else if (mode === 'boot') process.stderr.write('tsvmm vmm: KVM lacks KVM_CAP_COALESCED_PIO: every UART byte exits to the vmm\n');
  }
  const ringWatch = ring && new RingWatch(ring, vcpus[0].run, RUN.immediateExit, snapView.journal(0).commit);
  const keeperConfig = (dormant: boolean) => ({
    vmFd: vm.fd, snapFd: FD.SNAPSHOT, msrs, vcpus: vcpus.map((v) => ({ fd: v.fd, run: native.address(v.runBytes) })), irqfds, dormant,
    seccomp: keeperSeccomp(), ...(ring ? { coalescedRing: native.address(ring.buffer as ArrayBuffer) } : {}),
  });
  const restoreConfig = { vmFd: vm.fd, vcpuFds: vcpus.map((v) => v.fd), irqfds };
  let keeperPid = 0;
  // A standby's keeper is cloned now, dormant: the takeover arms it before the guest runs. vCPU 0's
  // takeover arms the timerfd takeoverFd (2 ms) once the guest runs: this thread, watching it on its
  // event loop, then reports; it is not woken while the vCPU is on its way into the guest.
  if (mode === 'standby' && recovery) keeperPid = keeper.keeperStart(keeperConfig(true));
  const takeoverFd = mode === 'standby' ? keeper.timerfdCreate() : -1;
  if (mode === 'standby') {
    poller.pollerStart(() => { const r = keeper.lastTakeover(); running(r.resumedNs, r); });
    poller.pollerAdd(takeoverFd, 0, true);
  }
  const pauseCtl = new PauseControl(ControlPage.tryMap(FD.STATE), vcpus);
  let parked = 0;
  let onAllParked: (() => void) | undefined;
  const hookMmio = mode === 'boot' && process.env.TSVMM_TEST_HOOKS === '1' ? process.env.TSVMM_TEST_DIE_MMIO : undefined;
  for (let id = 0; id < cfg.cpus; id++) {
    const data: VcpuThreadData = {
      vmFd: vm.fd, vcpuFd: vcpuFds[id], id, mmapSize, supportedCpuid: supported, cpus: cfg.cpus,
      stateFd: FD.STATE, outFd: FD.SERIAL_OUT, counters, devices, snapFd: FD.SNAPSHOT, prepared: true, go: go.buffer as SharedArrayBuffer, restored: restore, standby: mode === 'standby',
      dieAtMmio: hookMmio, pause: pauseCtl.sab, coalesced: ring !== undefined,
      // A standby's vCPU 0 waits for the takeover itself and runs the guest straight after it.
      takeover: mode === 'standby' && id === 0 ? { ...restoreConfig, notifyFd: takeoverFd } : undefined,
    };
    const w = vcpuThread(data);
    w.on('message', (m: VcpuThreadMessage) => {
      if (m.kind === 'parked') { if (++parked === cfg.cpus) onAllParked?.(); }
      else if (m.kind === 'started') {
        pauseCtl.started(m.id, m.tid);
        if (START_DEBUG && m.id === 0 && mode !== 'standby') startPhase('vmm', 'vCPU 0 entering KVM_RUN', { at: performance.timeOrigin + Number(m.ns) / 1e6 + performance.now() - Number(process.hrtime.bigint()) / 1e6 });
        if (log.enabled('debug')) log.debug(`vCPU ${m.id} running at ${performance.now().toFixed(1)} ms since process start (monotonic ${m.ns} ns)`);
        if (m.id === 0) ringWatch?.started(m.tid);
      } else if (m.kind === 'exit') finish({ guestExit: { code: m.code, reason: m.reason } }, 0);
      else if (m.kind === 'fatal') finish({ fatal: { message: m.message } }, 0);
      else if (m.kind === 'corrupt') {
        log.error(`${m.message}: this vmm's state is corrupt; it dies and the guest is restored from its keeper's save`);
        process.kill(process.pid, 'SIGKILL');
      }
    });
    w.on('error', (e) => finish({ fatal: { message: `vCPU ${id} thread failed: ${e.message}` } }, 1));
  }
  releaseUnusedVcpuThreads();

  const tBuilt = performance.now();
  if (mode !== 'standby') startPhase('vmm', 'VM built (vCPU threads parked)');

  let orphanWatch: NodeJS.Timeout | undefined;
  /** The ACPI GED's interrupt (vmm/ged.ts): raised once the guest runs here. */
  let ged: GedInterrupt | undefined;
  /** The guest runs (its vCPU threads are released): report, and start the heartbeat. */
  const running = (resumedNs: bigint, r?: RestoreResult) => {
    clearInterval(orphanWatch);
    tookOver = true;
    if (r?.repaired && mode === 'standby') log.warn(`snapshot generation ${r.generation} was corrupt: ${describeRepairs(r.repaired)}`, { event: 'snapshot-repaired', generation: r.generation });
    if (r?.refusedMsrs.length) log.warn(`KVM refused to restore MSRs ${r.refusedMsrs.map((i: number) => '0x' + i.toString(16)).join(' ')}`);
    pauseCtl.activate();
    const warm = mode === 'standby';
    const generation = r?.generation ?? 0;
    if (log.enabled('debug')) {
      log.debug(`${mode} timeline (ms since process start): modules ${tModules.toFixed(1)}, VM and vCPUs made ${tBuiltVm.toFixed(1)}, snapshot claimed ${tSnap.toFixed(1)}, ` +
        `VM built ${tBuilt.toFixed(1)}, running ${performance.now().toFixed(1)}` +
        `${r ? ` [monotonic ns: died ${r.diedNs} resumed ${r.resumedNs}]` : ''}${r && warm ? `; keeper saw the death -> saved ${(Number(r.savedNs - r.diedNs) / 1e6).toFixed(3)} ms -> standby claimed ${(Number(r.claimedNs - r.savedNs) / 1e6).toFixed(3)} ms -> vCPUs released ${(Number(r.resumedNs - r.claimedNs) / 1e6).toFixed(3)} ms` : ''}`);
    }
    send({
      ready: {
        component: 'vmm', pid: process.pid, keeperPid,
        restoredGeneration: generation, diedNs: Number(r?.diedNs ?? 0n), savedNs: Number(r?.savedNs ?? 0n),
        warm, resumedNs: Number(resumedNs),
      },
    });
    trimMallocOnceSettled();
    irqRoutes.start();
    ged = new GedInterrupt(page, (gsi) => { vm.irqLine(gsi, 1); vm.irqLine(gsi, 0); });
    ged.start();
    // Hang detection: the supervisor watches this counter (the main thread's event loop beats it).
    if (recovery) {
      devPage.beat(Component.Vmm);
      setInterval(() => devPage.beat(Component.Vmm), HEARTBEAT_MS);
    }
  };
  /** Releases the vCPU threads (parked on `go`, vmm/vcpu-thread.ts). */
  const release = (): bigint => {
    const t = process.hrtime.bigint();
    Atomics.store(go, 0, 1);
    keeper.futexWake(go, 0);
    return t;
  };

  if (mode === 'standby') {
    onAllParked = () => {
      // Before the takeover can run the guest (vCPU 0, in the native takeover, is covered: TSYNC).
      confineSelf('vmm');
      send({ ready: { component: 'vmm', pid: process.pid, standby: true, keeperPid } });
      trimMallocOnceSettled();
      // vCPU 0 is in the native takeover (vmm/vcpu-thread.ts); exit if the supervisor goes away first.
      const ppid = process.ppid;
      orphanWatch = setInterval(() => { if (process.ppid !== ppid) process.exit(EXIT_NOT_NEEDED); }, 1000);
    };
  } else {
    let r: RestoreResult | undefined;
    if (claimed !== undefined) {
      // Verifies the checksum, sets every vCPU's and the VM's state, registers the irqfds (restore.c).
      r = keeper.restore({ ...restoreConfig, snap: snapView.buf });
      if (r.status < 0) throw new SnapshotError(restoreFailure(r));
      if (log.enabled('debug')) {
        for (let id = 0; id < cfg.cpus; id++) log.debug(`restore gen ${r.generation} ${snapView.describeVcpu(id)}`);
      }
    } else {
      for (const q of irqfds) vm.irqfd(q.fd, q.gsi);
    }
    const start = () => {
      startPhase('vmm', mode === 'restore' ? 'snapshot restored: starting the guest' : devices.length ? 'devices served (the driver-domain beat): starting the guest' : 'starting the guest');
      // The keeper is armed before any vCPU runs, so it never saves a half-built or half-restored VM.
      if (recovery) keeperPid = keeper.keeperStart(keeperConfig(false));
      // Every fd is open and every thread started: from here the guest runs, and the vmm makes only
      // the calls on its allowlist (contracts/confinement.ts). The keeper, cloned just above, has its own.
      confineSelf('vmm');
      running(release(), r);
    };
    // A fresh guest starts once its devices are served (as QEMU and Firecracker start vCPUs after
    // their backends): otherwise its first I/O waits on a driver-domain still starting up.
    // And once every vCPU thread has started, loaded its code and parked (vmm/vcpu-thread.ts): the
    // vmm confines itself in start(), and a thread still starting then makes calls its allowlist
    // does not have (seen: sched_getaffinity, SIGSYS, on a loaded host). The vCPU could not run
    // before its thread is parked anyway.
    const whenParked = () => { if (parked === cfg.cpus) start(); else onAllParked = start; };
    if (mode === 'boot' && devices.length) whenDriverDomainReady(devPage, whenParked);
    else whenParked();
  }

  process.on('message', (m: { pb?: string }) => {
    if (typeof m?.pb !== 'string') return;
    let msg: SupervisorMessage;
    try { msg = SupervisorMessageCodec.decode(Buffer.from(m.pb, 'base64')); } catch { return; }
    // tsvmm snapshot (contracts/snapshot-dir.ts).
    if ('snapshot' in msg && msg.snapshot) { snapshotNow(msg.snapshot, cfg, pauseCtl); return; }
    // tsvmm update: a standby of the new build is ready. Exit at once, cleanly: the keeper saves the
    // VM (completing or recording each vCPU's exit) and the standby resumes it.
    if ('handover' in msg && msg.handover && !finished && recovery) keeper.exitNow(0);
    // The supervisor saw this vmm's keeper die (or killed it stopped): clone a new one, or the next
    // death of this vmm would lose the guest.
    if (!('armKeeper' in msg) || !msg.armKeeper || finished || !recovery) return;
    if (msg.armKeeper.deadPid !== keeperPid) return; // an old request: this keeper is already a new one
    try {
      keeperPid = keeper.keeperRestart();
      send({ keeperArmed: { pid: keeperPid } });
    } catch (e) {
      send({ keeperArmed: { pid: 0, error: (e as Error).message } });
    }
  });

  // Terminal input -> the UART's receive ring.
  const serial = new Serial(page, () => undefined, () => { vm.irqLine(4, 1); vm.irqLine(4, 0); });
  process.stdin.on('data', (chunk: Buffer) => { page.rxPush(chunk); serial.inputArrived(); });
  // Input the priv-domain pushed (tsvmm console): raise the UART's receive interrupt when the
  // ring's head moves. The supervisor's GED events (tsvmm stop's power button) arrive the same way.
  let rxSeen = page.rxHead();
  setInterval(() => {
    const h = page.rxHead();
    if (h !== rxSeen) { rxSeen = h; serial.inputArrived(); }
    serial.repeatStanding(SERIAL_REPEAT_POLLS);
    ged?.poll();
  }, SERIAL_INPUT_POLL_MS).unref();
  process.stdin.on('error', () => undefined);

  // Keep the vCPUs' kvm_run mappings (the keeper reads them) alive with the process.
  (globalThis as { tsvmmVcpus?: Vcpu[] }).tsvmmVcpus = vcpus;
  installTestHooksIfAsked('vmm');
}

/**
 * A snapshot of the running guest (the supervisor has stopped the driver-domain): parks every vCPU,
 * saves their and the VM's state through the keeper's own code (keeper.c tsvmm_snap_save_live) and
 * writes it, the state pages and guest RAM's populated pages into the directory; answers, then lets
 * the vCPUs run again, unless the VM stops after the snapshot.
 */
function snapshotNow(req: SnapshotRequest, cfg: VmConfig, pauseCtl: PauseControl): void {
  // While the guest runs: the copy's memory, and guest RAM's mapping, faulted in (not in the pause).
  const tPrep = performance.now();
  const prepared = req.stop ? undefined : prepareCapture(FD.RAM, cfg.memBytes);
  const t0 = performance.now();
  let held = false;
  try {
    pauseCtl.hold(2000);
    held = true;
    const tHeld = performance.now();
    const image = keeper.snapshotSaveLive();
    const saved = new SnapshotView(image);
    if (saved.stateName !== 'saved') throw new SnapshotError(saved.failure().replace('the keeper failed to save', 'saving'));
    const tSaved = performance.now();
    // Copied into private memory, unless the VM stops anyway (or its RAM is very large): then it is
    // written straight from guest memory while the vCPUs stay parked.
    const c = captureSnapshot(image, FD.STATE, FD.RAM, cfg.memBytes, !req.stop, prepared);
    const done = (written: boolean, pauseMs: number) =>
      send({ snapshotDone: { ok: true, written, pauseMs, ramDataBytes: c.ramBytes, ramExtents: c.extents } });
    let pauseMs = 0;
    if (c.copied) {
      // The guest runs on, and the driver-domain may (its writes land in guest RAM, not in the copy).
      const tCopied = performance.now();
      pauseCtl.release();
      held = false;
      pauseMs = performance.now() - t0;
      if (process.env.TSVMM_SNAPSHOT_DEBUG) {
        log.info(`snapshot timeline (ms): prepare ${(t0 - tPrep).toFixed(1)} (guest running); paused: vCPUs parked ${(tHeld - t0).toFixed(1)}, ` +
          `keeper save ${(tSaved - tHeld).toFixed(1)}, copy ${(c.ramBytes / 2 ** 20).toFixed(1)} MiB ${(tCopied - tSaved).toFixed(1)}${prepared && prepared.copy.byteLength >= c.ramBytes ? '' : ' (unprepared)'}, released ${(performance.now() - tCopied).toFixed(1)}: ${pauseMs.toFixed(1)}`);
      }
      done(false, pauseMs);
    }
    writeSnapshotFiles(req.dir, c);
    if (held) pauseMs = performance.now() - t0;
    done(true, pauseMs);
  } catch (e) {
    send({ snapshotDone: { ok: false, error: (e as Error).message, pauseMs: performance.now() - t0, ramDataBytes: 0 } });
  } finally {
    if (held && !req.stop) pauseCtl.release();
  }
}

/**
 * Calls `then` once the driver-domain has started serving (its first heartbeat in the state page),
 * polling every millisecond; after DEVICE_WAIT_MS it goes on anyway (the guest's drivers wait for
 * the devices, and the supervisor restarts a driver-domain that fails).
 */
/** How often the vmm looks for console input another process pushed into the UART's ring. */
const SERIAL_INPUT_POLL_MS = 10;
/** A UART interrupt condition standing this many polls (0.5 s) is raised again (vmm/serial.ts repeatStanding). */
const SERIAL_REPEAT_POLLS = 50;

function whenDriverDomainReady(page: StatePage, then: () => void): void {
  const t0 = performance.now();
  const check = () => {
    if (page.heartbeat(Component.DriverDomain) !== 0) return then();
    if (performance.now() - t0 >= DEVICE_WAIT_MS) {
      log.warn(`the driver-domain is not serving after ${DEVICE_WAIT_MS / 1000} s; starting the guest without it`);
      return then();
    }
    setTimeout(check, 1);
  };
  check();
}

/** Is `fd` open (the supervisor passed it)? */
function passedFd(fd: number): boolean {
  try { fs.fstatSync(fd); return true; } catch { return false; }
}

/**
 * A file the supervisor opened for us (the vmm may not open it: contracts/confinement.ts), read
 * whole from offset 0 (the fd's offset is shared with the supervisor); its path if none was passed.
 */
function readPassed(fd: number, file: string): Buffer {
  if (!passedFd(fd)) return fs.readFileSync(file);
  const size = fs.fstatSync(fd).size;
  const buf = Buffer.alloc(size);
  let off = 0;
  while (off < size) {
    const n = fs.readSync(fd, buf, off, size - off, off);
    if (n <= 0) break;
    off += n;
  }
  return buf.subarray(0, off);
}

/** A cold restore: waits for the keeper, then claims its snapshot (exits quietly if a standby won it). */
function claimSnapshot(snapView: SnapshotView, cpus: number): number {
  // tsvmm run --restore: the supervisor may still be reading guest RAM in (the memfd says SAVING) for
  // up to TSVMM_RESTORE_WAIT_MS; waited for in slices, so a vmm whose supervisor died meanwhile goes.
  const waitMs = Number(process.env.TSVMM_RESTORE_WAIT_MS) || 0;
  const until = performance.now() + waitMs;
  const ppid = process.ppid;
  let generation: number | undefined;
  for (;;) {
    try {
      generation = snapView.claimSaved(cpus, waitMs ? 500 : undefined);
      break;
    } catch (e) {
      if (!waitMs || snapView.state !== SnapState.SAVING || performance.now() > until) throw e;
      if (process.ppid !== ppid) process.exit(EXIT_NOT_NEEDED);
    }
  }
  if (generation === undefined) {
    log.info(`snapshot generation ${snapView.generation} was already claimed by another vmm; exiting`);
    process.exit(EXIT_NOT_NEEDED);
  }
  // Before anything reads a record (the MSR list, the pending writes): validated, repaired from the
  // mirror copy where one bit went wrong after the keeper sealed it.
  const repairs = snapView.verifyClaimed(cpus);
  if (repairs) log.warn(`snapshot generation ${generation} was corrupt: ${repairs}`, { event: 'snapshot-repaired', generation });
  return generation;
}

function main(): void {
  exitOnUncaughtException('vmm');
  const cfg = componentConfig();
  const mode: VmmMode = process.env.TSVMM_STANDBY === '1' ? 'standby' : process.env.TSVMM_RESTORE === '1' ? 'restore' : 'boot';
  if (!cfg) {
    process.stderr.write('tsvmm vmm: this process is started by `tsvmm run`, not by hand\n');
    process.exit(2);
  }
  if (mode !== 'standby') { startNode('vmm'); startPhase('vmm', 'modules loaded (main)'); }
  log.debug(`started (${mode}), ${cfg.cpus} vCPU${cfg.cpus === 1 ? '' : 's'}`, { mode });
  // Our supervisor dying is not the guest's end: a new one adopts us (recovery/orphan.ts). A standby
  // that has not taken over is not needed by anyone then.
  watchSupervisor({
    role: 'vmm', name: cfg.name,
    adoptable: () => mode !== 'standby' || tookOver,
    giveUp: (why) => {
      if (mode === 'standby' && !tookOver) process.exit(EXIT_NOT_NEEDED);
      keeper.keeperStop(); // the VM ends here: its keeper must not save it for nobody
      log.error(`${why}: ending the VM`);
      process.exit(1);
    },
  });
  try {
    buildAndRun(cfg, mode);
  } catch (e) {
    send({ fatal: { message: (e as Error).message } });
    setTimeout(() => process.exit(1), 20);
  }
}

main();
