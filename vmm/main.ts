/**
 * The vmm process: owns /dev/kvm. Builds the VM from the VmConfig the
 * supervisor passed (guest RAM and state pages come in as fds), loads the
 * kernel, starts one worker thread per vCPU and reports the guest's exit.
 */
// First: starts the vCPU threads, so their boot overlaps the loading of everything below.
import { releaseUnusedVcpuThreads, vcpuThread } from './early-vcpu-threads';
import * as fs from 'fs';
import { ComponentMessage, ComponentMessageCodec, VmConfig, VmConfigCodec } from '../proto';
import { abi, errnoCode, ioctl, native } from '../native/kvm';
import { Kvm } from './kvm/system';
import { Vm } from './kvm/vm';
import { kvmBootState, loadKernel } from './boot/kernel';
import { mapGuestRam } from './guest-ram';
import { buildAcpi } from './acpi';
import { deviceFds, FD } from './fds';
import { deviceList, virtioCmdline } from './devices';
import { MmioReg } from '../devices/virtio-mmio-layout';
import { PLATFORM_PAGE_SIZE, PlatformPage } from './platform-page';
import { Serial } from './serial';
import type { VcpuThreadData, VcpuThreadMessage } from './vcpu-thread';
import { Vcpu } from './kvm/vcpu';
import { vcpuCpuid } from './cpuid';
import { decodeVcpuRecord, keeper, SavedSnapshot, SNAP, SnapshotView, SnapState, VCPU_BLOBS, VcpuSnapshot } from '../recovery/snapshot';
import { exitOnUncaughtException, installTestHooks } from '../recovery/test-hooks';
import { EXIT_NOT_NEEDED } from './exit-codes';
import { decodeMsrs, encodeMsrs } from './kvm/structs';
import { Component, StatePage } from '../devices/state-page';
import { VirtioMmioTransport } from '../devices/virtio-mmio';
import { DEVICE_PAGE_OFFSET, STATE_MEMFD_SIZE } from './fds';
import { DeviceEntry } from './devices';
import { msrIndexList, probeMsrs, replayPendingWrite, restoreVcpu, restoreVm, SerialLineJournal } from './restore';
import { Platform, PlatformEvent } from './platform';
import { ControlPage } from './control-page';
import { PauseControl } from './pause';

/** Where KVM puts its real-mode TSS and identity map (below the LAPIC, above the IOAPIC). */
const KVM_TSS_ADDR = 0xfffbd000;
const KVM_IDENTITY_MAP_ADDR = 0xfffbc000;
/** The main thread's heartbeat period (the supervisor's hang threshold is 250 ms by default). */
const HEARTBEAT_MS = 20;

function send(msg: ComponentMessage): void {
  process.send?.({ pb: Buffer.from(ComponentMessageCodec.encode(msg)).toString('base64') });
}

/** How this vmm starts: a fresh boot, a cold restore (it replaces a dead vmm), or a warm standby. */
export type VmmMode = 'boot' | 'restore' | 'standby';

/**
 * Builds the VM and starts it. `restore`: this vmm replaces one that died;
 * instead of loading the kernel it restores the state its keeper saved in the
 * snapshot memfd into a fresh VM on the same guest RAM (recovery/snapshot.ts,
 * vmm/restore.ts), replays a guest write that was in flight, and resumes.
 * `standby` (tsvmm run --standby): builds everything a restore needs (VM,
 * irqchip, PIT, memory slots, ioeventfds, vCPUs with their CPUID, the MSR
 * list, vCPU threads parked on a flag), reports itself ready, then blocks on
 * the snapshot's futex until the primary's keeper has saved it; it claims
 * that generation and resumes the guest (the warm path, recovery/supervisor.ts).
 */
export function buildAndRun(cfg: VmConfig, mode: VmmMode = 'boot'): void {
  const restore = mode !== 'boot';
  const snapView = SnapshotView.map(FD.SNAPSHOT, cfg.cpus);
  snapView.checkLayout(cfg.cpus);
  // First, so a bad or missing snapshot fails before anything is built.
  const tModules = performance.now();
  let saved: SavedSnapshot | undefined = mode === 'restore' ? claimSnapshot(snapView, cfg.cpus) : undefined;
  const tSnap = performance.now();
  const kvm = Kvm.open();
  const vm = new Vm(kvm.createVm());
  vm.setTssAddr(KVM_TSS_ADDR);
  vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDR);
  vm.createIrqchip();
  vm.createPit2();

  const ram = mapGuestRam(FD.RAM, cfg.memBytes);
  ram.slots.forEach((s, i) => vm.setUserMemoryRegion(i, s.gpa, s.host));

  let boot: ReturnType<typeof kvmBootState> | undefined;
  const kernel = restore ? undefined : fs.readFileSync(cfg.kernel);
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
  const registerIrqfds = () => {
    for (const d of devices) deviceFds(d.index, d.queues).call.forEach((fd) => irqfdWhenFree(vm, fd, d.gsi));
  };

  // The guest learns its CPUs and devices from ACPI (as Linux does) and the command line.
  if (!restore) {
    const rsdp = buildAcpi(ram.memory, { cpus: cfg.cpus, virtio: devices.map((d) => ({ base: d.base, gsi: d.gsi })) });
    const cmdline = [cfg.cmdline, virtioCmdline(devices)].filter((s) => s).join(' ');
    // A bzImage (64-bit boot protocol) or a PVH ELF: vmm/boot/kernel.ts picks the path by magic.
    const initrd = cfg.initrd ? fs.readFileSync(cfg.initrd) : undefined;
    boot = kvmBootState(loadKernel(ram.memory, kernel!, { cmdline, initrd, memBytes: cfg.memBytes, rsdp }).cpu);
  }

  const page = new PlatformPage(native.mmap(FD.STATE, PLATFORM_PAGE_SIZE, 0, true));
  page.check();
  const devPage = StatePage.attach(new Uint8Array(native.mmap(FD.STATE, STATE_MEMFD_SIZE - DEVICE_PAGE_OFFSET, DEVICE_PAGE_OFFSET, true)));

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
  // The MSRs the keeper saves: a restore reuses the list its snapshot was saved with (no re-probe).
  const msrs = saved ? savedMsrIndices(saved) : probeMsrs(vcpus[0], msrIndexList(kvm.fd), abi('snap_TSVMM_MAX_MSRS'));

  // vCPU threads start now and park on `go`: their start (~50 ms of Node worker boot) overlaps the
  // restore, or, for a standby, happens long before it is needed.
  const go = new Int32Array(new SharedArrayBuffer(4));
  const pauseCtl = new PauseControl(ControlPage.tryMap(FD.STATE), vcpus);
  let parked = 0;
  let onAllParked: (() => void) | undefined;
  const hookMmio = mode === 'boot' && process.env.TSVMM_TEST_HOOKS === '1' ? process.env.TSVMM_TEST_DIE_MMIO : undefined;
  for (let id = 0; id < cfg.cpus; id++) {
    const data: VcpuThreadData = {
      vmFd: vm.fd, vcpuFd: vcpuFds[id], id, mmapSize, supportedCpuid: supported, cpus: cfg.cpus,
      stateFd: FD.STATE, outFd: FD.SERIAL_OUT, counters, devices, snapFd: FD.SNAPSHOT, prepared: true, go: go.buffer as SharedArrayBuffer,
      dieAtMmio: hookMmio, pause: pauseCtl.sab,
    };
    const w = vcpuThread(data);
    w.on('message', (m: VcpuThreadMessage) => {
      if (m.kind === 'parked') { if (++parked === cfg.cpus) onAllParked?.(); }
      else if (m.kind === 'started') {
        pauseCtl.started(m.id, m.tid);
        if (process.env.TSVMM_RESTORE_DEBUG) process.stderr.write(`tsvmm vmm: vCPU ${m.id} running at ${performance.now().toFixed(1)} ms since process start\n`);
      } else if (m.kind === 'exit') finish({ guestExit: { code: m.code, reason: m.reason } }, 0);
      else if (m.kind === 'fatal') finish({ fatal: { message: m.message } }, 0);
    });
    w.on('error', (e) => finish({ fatal: { message: `vCPU ${id} thread failed: ${e.message}` } }, 1));
  }
  releaseUnusedVcpuThreads();

  const tBuilt = performance.now();
  let keeperPid = 0;
  let wokeNs = 0n;
  /** Restores `saved` (if any) into this VM, arms a keeper and releases the vCPU threads. */
  const resume = (warm: boolean) => {
    const tResume = performance.now();
    const marks: [string, number][] = [];
    const mark = (what: string) => { if (process.env.TSVMM_RESTORE_DEBUG) marks.push([what, performance.now()]); };
    if (saved) {
      for (const v of vcpus) {
        const refused = restoreVcpu(v, saved.vcpus[v.id]);
        if (refused.length) process.stderr.write(`tsvmm vmm: vCPU ${v.id}: KVM refused to restore MSRs ${refused.map((i) => '0x' + i.toString(16)).join(' ')}\n`);
      }
      if (process.env.TSVMM_RESTORE_DEBUG) {
        for (const v of saved.vcpus) {
          process.stderr.write(`tsvmm vmm: restore gen ${saved.generation} vCPU ${v.id}: pending=${v.pending} exit=${v.exitReason} ` +
            `handled=${v.journalCommit >>> 31} completed=${v.completed} rip 0x${v.ripBefore.toString(16)} -> 0x${v.ripAfter.toString(16)}` +
            `${v.replay ? ` replay addr=0x${v.replay.addr.toString(16)} size=${v.replay.size} data=${Buffer.from(v.replay.data).toString('hex')}` : ''}\n`);
        }
      }
      mark('vCPUs restored');
      restoreVm(vm, saved.vm);
      mark('VM restored');
    }
    registerIrqfds();
    mark('irqfds');
    if (saved) replayPendingWrites(saved, snapView, page, vm, devices, finish);
    mark('replay');
    // TSVMM_NO_RECOVERY=1 (bench/recovery's overhead row only): no keeper, no journal, no heartbeat.
    const recovery = process.env.TSVMM_NO_RECOVERY !== '1';
    if (recovery) keeperPid = keeper.keeperStart({
      vmFd: vm.fd, snapFd: FD.SNAPSHOT, msrs, vcpus: vcpus.map((v) => ({ fd: v.fd, run: native.address(v.runBytes) })),
      irqfds: devices.flatMap((d) => deviceFds(d.index, d.queues).call.map((fd) => ({ fd, gsi: d.gsi }))),
    });
    mark('keeper armed');
    // The vCPU threads are parked on `go`: the guest runs from here.
    const resumedNs = process.hrtime.bigint();
    pauseCtl.activate();
    Atomics.store(go, 0, 1);
    Atomics.notify(go, 0);
    const tGo = performance.now();
    if (process.env.TSVMM_RESTORE_DEBUG) {
      process.stderr.write(`tsvmm vmm: ${mode}${warm ? ' (warm)' : ''} timeline (ms since process start): modules ${tModules.toFixed(1)}, ` +
        `snapshot read ${tSnap.toFixed(1)}, VM built ${tBuilt.toFixed(1)}, resume ${tResume.toFixed(1)} -> vCPUs released ${tGo.toFixed(1)} ` +
        `(restore + keeper ${(tGo - tResume).toFixed(2)} ms: ${marks.map(([w, t]) => `${w} +${(t - tResume).toFixed(2)}`).join(', ')})` +
        `${warm && saved ? `; keeper saw the death -> saved ${(Number(saved.savedNs - saved.diedNs) / 1e6).toFixed(2)} ms -> standby woke ${(Number(wokeNs - saved.savedNs) / 1e6).toFixed(2)} ms -> vCPUs released ${(Number(resumedNs - wokeNs) / 1e6).toFixed(2)} ms` : ''}\n`);
    }
    send({
      ready: {
        component: 'vmm', pid: process.pid, keeperPid,
        restoredGeneration: saved?.generation ?? 0, diedNs: Number(saved?.diedNs ?? 0n), savedNs: Number(saved?.savedNs ?? 0n),
        warm, resumedNs: Number(resumedNs),
      },
    });
    // Hang detection: the supervisor watches this counter (the main thread's event loop beats it).
    if (recovery) {
      devPage.beat(Component.Vmm);
      setInterval(() => devPage.beat(Component.Vmm), HEARTBEAT_MS);
    }
  };

  if (mode === 'standby') {
    // Run the takeover's JavaScript once now (lazy compilation and first-call costs), on this
    // standby's own fresh vCPUs and VM: its state is set again from the snapshot at takeover.
    try { warmRestorePath(vm, vcpus, msrs); } catch (e) { process.stderr.write(`tsvmm vmm: standby warm-up skipped: ${(e as Error).message}\n`); }
    onAllParked = () => {
      send({ ready: { component: 'vmm', pid: process.pid, standby: true } });
      // Off the IPC callback, then block until the primary's keeper has saved.
      setImmediate(() => {
        saved = waitForSnapshot(snapView, cfg.cpus);
        wokeNs = process.hrtime.bigint();
        resume(true);
      });
    };
  } else {
    resume(false);
  }

  // Terminal input -> the UART's receive ring.
  const serial = new Serial(page, () => undefined, () => { vm.irqLine(4, 1); vm.irqLine(4, 0); });
  process.stdin.on('data', (chunk: Buffer) => { page.rxPush(chunk); serial.inputArrived(); });
  process.stdin.on('error', () => undefined);

  // Keep the vCPUs' kvm_run mappings (the keeper reads them) alive with the process.
  (globalThis as { tsvmmVcpus?: Vcpu[] }).tsvmmVcpus = vcpus;
  installTestHooks('vmm');
}

/**
 * KVM_IRQFD, retried while it fails with EBUSY: an eventfd can back one irqfd at a time (Linux 6.x),
 * and the dead vmm's VM releases its irqfds only as its keeper exits, just after the save a warm
 * standby wakes on. Usually free within a fraction of a millisecond.
 */
function irqfdWhenFree(vm: Vm, fd: number, gsi: number): void {
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  const deadline = performance.now() + 2000;
  for (;;) {
    try {
      vm.irqfd(fd, gsi);
      return;
    } catch (e) {
      if (errnoCode(e) !== 'EBUSY' || performance.now() > deadline) throw e;
      Atomics.wait(sleeper, 0, 0, 0.05);
    }
  }
}

/** A standby's dry run of the restore path: GET each vCPU's and the VM's state and SET it back. */
function warmRestorePath(vm: Vm, vcpus: Vcpu[], msrs: number[]): void {
  decodeVcpuRecord(new Uint8Array(SNAP.VCPU_SIZE));
  keeper.crc32(new Uint8Array(64), 0, 64);
  for (const v of vcpus) {
    const blobs = {} as VcpuSnapshot['blobs'];
    for (const [name, , size, setter] of VCPU_BLOBS) {
      if (name === 'msrs') {
        const b = encodeMsrs(msrs.map((index) => ({ index, data: 0n })));
        b.writeUInt32LE(ioctl(v.fd, 'KVM_GET_MSRS', b), 0);
        blobs.msrs = b;
      } else {
        const b = Buffer.alloc(abi(size));
        ioctl(v.fd, setter.replace('KVM_SET_', 'KVM_GET_'), b);
        blobs[name] = b;
      }
    }
    restoreVcpu(v, { id: v.id, pending: 0, exitReason: 0, journalCommit: 0, completed: false, ripBefore: 0n, ripAfter: 0n, blobs });
  }
  const get = (name: string, size: number, init?: (b: Buffer) => void) => { const b = Buffer.alloc(size); init?.(b); ioctl(vm.fd, name, b); return b; };
  restoreVm(vm, {
    pit2: get('KVM_GET_PIT2', abi('sizeof_kvm_pit_state2')),
    clock: get('KVM_GET_CLOCK', abi('sizeof_kvm_clock_data')),
    irqchips: [0, 1, 2].map((chip) => get('KVM_GET_IRQCHIP', abi('sizeof_kvm_irqchip'), (b) => b.writeUInt32LE(chip, 0))),
  });
}

/** The MSR indices a snapshot saved (vCPU 0's list; all vCPUs save the same one). */
function savedMsrIndices(saved: SavedSnapshot): number[] {
  const b = Buffer.from(saved.vcpus[0].blobs.msrs);
  return decodeMsrs(b, b.readUInt32LE(0)).map((e) => e.index);
}

/** A cold restore: waits for the keeper, then claims its snapshot (exits quietly if a standby won it). */
function claimSnapshot(snapView: SnapshotView, cpus: number): SavedSnapshot {
  const saved = snapView.readSaved(cpus);
  if (!snapView.claim(saved.generation)) {
    process.stderr.write(`tsvmm vmm: snapshot generation ${saved.generation} was already claimed by another vmm; exiting\n`);
    process.exit(EXIT_NOT_NEEDED);
  }
  return saved;
}


/**
 * A standby's wait: blocks on the snapshot's futex word until a keeper has
 * saved a generation nobody has claimed, then claims it. Exits if the
 * supervisor goes away.
 */
function waitForSnapshot(snapView: SnapshotView, cpus: number): SavedSnapshot {
  const ppid = process.ppid;
  for (;;) {
    const seq = snapView.wakeSeq;
    if (snapView.state === SnapState.SAVED) {
      const gen = snapView.generation;
      if (snapView.claimGen === gen - 1 && snapView.claim(gen)) {
        const t = process.hrtime.bigint();
        const saved = snapView.readSaved(cpus);
        if (process.env.TSVMM_RESTORE_DEBUG) process.stderr.write(`tsvmm vmm: standby claimed gen ${gen} ${(Number(t - saved.savedNs) / 1e6).toFixed(2)} ms after the save; snapshot read + verified in ${(Number(process.hrtime.bigint() - t) / 1e6).toFixed(2)} ms\n`);
        return saved;
      }
    }
    const t = process.hrtime.bigint();
    snapView.waitWake(seq, 1000);
    if (process.env.TSVMM_RESTORE_DEBUG) process.stderr.write(`tsvmm vmm: standby futex wait: seq ${seq} -> ${snapView.wakeSeq}, state ${snapView.stateName}, waited ${(Number(process.hrtime.bigint() - t) / 1e6).toFixed(2)} ms\n`);
    if (process.ppid !== ppid) process.exit(EXIT_NOT_NEEDED);
  }
}

/**
 * A guest write (PIO out, MMIO write) the old vmm had not finished handling
 * when it died: the keeper completed it in the kernel, so it is replayed here,
 * to the same device models over the same shared pages, exactly once per
 * snapshot generation (the journal records which generation was replayed).
 */
function replayPendingWrites(saved: SavedSnapshot, snapView: SnapshotView, page: PlatformPage, vm: Vm, devices: DeviceEntry[],
  finish: (msg: ComponentMessage, code: number) => void): void {
  for (const v of saved.vcpus) {
    if (!v.replay) continue;
    const j = snapView.journal(v.id);
    if (Atomics.load(j.replayedGeneration, 0) === (saved.generation | 0)) continue;
    const line = new SerialLineJournal(j, FD.SERIAL_OUT);
    const serial = new Serial(page, (b) => line.push(b), () => { vm.irqLine(4, 1); vm.irqLine(4, 0); });
    let event: PlatformEvent | undefined;
    const platform = new Platform(serial, (e) => { event = e; });
    if (devices.length) {
      const devPage = StatePage.attach(new Uint8Array(native.mmap(FD.STATE, STATE_MEMFD_SIZE - DEVICE_PAGE_OFFSET, DEVICE_PAGE_OFFSET, true)));
      for (const dev of devices) platform.mmio.push(new VirtioMmioTransport(dev.base, devPage.device(dev.index)));
    }
    replayPendingWrite(platform, v);
    line.handled();
    Atomics.store(j.replayedGeneration, 0, saved.generation | 0);
    if (event?.kind === 'poweroff') finish({ guestExit: { code: event.code, reason: `guest powered off with status ${event.code}` } }, 0);
    else if (event) finish({ guestExit: { code: 0, reason: 'guest requested a reset (tsvmm does not reboot guests)' } }, 0);
  }
}

function main(): void {
  exitOnUncaughtException('vmm');
  const b64 = process.env.TSVMM_CONFIG;
  const mode: VmmMode = process.env.TSVMM_STANDBY === '1' ? 'standby' : process.env.TSVMM_RESTORE === '1' ? 'restore' : 'boot';
  if (!b64) {
    process.stderr.write('tsvmm vmm: this process is started by `tsvmm run`, not by hand\n');
    process.exit(2);
  }
  try {
    buildAndRun(VmConfigCodec.decode(Buffer.from(b64, 'base64')), mode);
  } catch (e) {
    send({ fatal: { message: (e as Error).message } });
    setTimeout(() => process.exit(1), 20);
  }
}

main();
