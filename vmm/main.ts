/**
 * The vmm process: owns /dev/kvm. Builds the VM from the VmConfig the
 * supervisor passed (guest RAM and state pages come in as fds), loads the
 * kernel, starts one worker thread per vCPU and reports the guest's exit.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { ComponentMessage, ComponentMessageCodec, VmConfig, VmConfigCodec } from '../proto';
import { abi, native } from '../native/kvm';
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
import { keeper, SavedSnapshot, SnapshotView } from '../recovery/snapshot';
import { StatePage } from '../devices/state-page';
import { VirtioMmioTransport } from '../devices/virtio-mmio';
import { DEVICE_PAGE_OFFSET, STATE_MEMFD_SIZE } from './fds';
import { DeviceEntry } from './devices';
import { msrIndexList, probeMsrs, replayPendingWrite, restoreVcpu, restoreVm, SerialLineJournal } from './restore';
import { Platform, PlatformEvent } from './platform';

/** Where KVM puts its real-mode TSS and identity map (below the LAPIC, above the IOAPIC). */
const KVM_TSS_ADDR = 0xfffbd000;
const KVM_IDENTITY_MAP_ADDR = 0xfffbc000;

function send(msg: ComponentMessage): void {
  process.send?.({ pb: Buffer.from(ComponentMessageCodec.encode(msg)).toString('base64') });
}

/**
 * Builds the VM and starts it. `restore`: this vmm replaces one that died;
 * instead of loading the kernel it restores the state its keeper saved in the
 * snapshot memfd into a fresh VM on the same guest RAM (recovery/snapshot.ts,
 * vmm/restore.ts), replays a guest write that was in flight, and resumes.
 */
export function buildAndRun(cfg: VmConfig, restore = false): void {
  const snapView = SnapshotView.map(FD.SNAPSHOT, cfg.cpus);
  // First, so a bad or missing snapshot fails before anything is built.
  const tModules = performance.now();
  const saved: SavedSnapshot | undefined = restore ? snapView.readSaved(cfg.cpus) : undefined;
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
  // straight back (irqfd); the vmm only emulates the transport registers.
  const devices = deviceList(cfg);
  for (const d of devices) {
    const fds = deviceFds(d.index, d.queues);
    fds.kick.forEach((fd, q) => vm.ioeventfd({ addr: d.base + MmioReg.QueueNotify, len: 4, fd, datamatch: q }));
    fds.call.forEach((fd) => vm.irqfd(fd, d.gsi));
  }

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
  // Every vCPU gets its CPUID and its boot (or restored) state here, before the keeper is armed
  // and before any vCPU runs, so the keeper never saves a half-built vCPU.
  const vcpus = vcpuFds.map((fd, id) => new Vcpu(fd, id, mmapSize));
  for (const v of vcpus) {
    v.setCpuid(vcpuCpuid(supported, v.id, cfg.cpus, v.tscKhz()));
    if (saved) {
      const refused = restoreVcpu(v, saved.vcpus[v.id]);
      if (refused.length) process.stderr.write(`tsvmm vmm: vCPU ${v.id}: KVM refused to restore MSRs ${refused.map((i) => '0x' + i.toString(16)).join(' ')}\n`);
    } else if (v.id === 0 && boot) {
      v.setSregs(boot.sregs);
      v.setRegs(boot.regs);
    }
  }
  if (saved && process.env.TSVMM_RESTORE_DEBUG) {
    for (const v of saved.vcpus) {
      process.stderr.write(`tsvmm vmm: restore gen ${saved.generation} vCPU ${v.id}: pending=${v.pending} exit=${v.exitReason} ` +
        `handled=${v.journalCommit >>> 31} completed=${v.completed} rip 0x${v.ripBefore.toString(16)} -> 0x${v.ripAfter.toString(16)}` +
        `${v.replay ? ` replay addr=0x${v.replay.addr.toString(16)} size=${v.replay.size} data=${Buffer.from(v.replay.data).toString('hex')}` : ''}\n`);
    }
  }
  if (saved) {
    restoreVm(vm, saved.vm);
    replayPendingWrites(saved, snapView, page, vm, devices, finish);
  }
  const msrs = probeMsrs(vcpus[0], msrIndexList(kvm.fd), abi('snap_TSVMM_MAX_MSRS'));
  const keeperPid = keeper.keeperStart({
    vmFd: vm.fd, snapFd: FD.SNAPSHOT, msrs, vcpus: vcpus.map((v) => ({ fd: v.fd, run: native.address(v.runBytes) })),
  });
  // Ready once every vCPU thread is about to run the guest (a restore's "resumed" moment).
  let started = 0;
  const ready = () => {
    if (process.env.TSVMM_RESTORE_DEBUG) {
      process.stderr.write(`tsvmm vmm: ${restore ? 'restore' : 'boot'} timeline (ms since process start): modules ${tModules.toFixed(1)}, ` +
        `snapshot read ${tSnap.toFixed(1)}, keeper armed ${tKeeper.toFixed(1)}, vCPU threads running ${performance.now().toFixed(1)}\n`);
    }
    send({
      ready: {
        component: 'vmm', pid: process.pid, keeperPid,
        restoredGeneration: saved?.generation ?? 0, diedNs: Number(saved?.diedNs ?? 0n), savedNs: Number(saved?.savedNs ?? 0n),
      },
    });
  };
  const tKeeper = performance.now();
  for (let id = 0; id < cfg.cpus; id++) {
    const data: VcpuThreadData = {
      vmFd: vm.fd, vcpuFd: vcpuFds[id], id, mmapSize, supportedCpuid: supported, cpus: cfg.cpus,
      stateFd: FD.STATE, outFd: FD.SERIAL_OUT, counters, devices, snapFd: FD.SNAPSHOT, prepared: true,
    };
    const w = new Worker(path.join(__dirname, 'vcpu-thread.js'), { workerData: data });
    w.on('message', (m: VcpuThreadMessage) => {
      if (m.kind === 'started' && ++started === cfg.cpus) ready();
      else if (m.kind === 'exit') finish({ guestExit: { code: m.code, reason: m.reason } }, 0);
      else if (m.kind === 'fatal') finish({ fatal: { message: m.message } }, 0);
    });
    w.on('error', (e) => finish({ fatal: { message: `vCPU ${id} thread failed: ${e.message}` } }, 1));
  }

  // Terminal input -> the UART's receive ring.
  const serial = new Serial(page, () => undefined, () => { vm.irqLine(4, 1); vm.irqLine(4, 0); });
  process.stdin.on('data', (chunk: Buffer) => { page.rxPush(chunk); serial.inputArrived(); });
  process.stdin.on('error', () => undefined);

  // Keep the vCPUs' kvm_run mappings (the keeper reads them) alive with the process.
  (globalThis as { tsvmmVcpus?: Vcpu[] }).tsvmmVcpus = vcpus;
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
  const b64 = process.env.TSVMM_CONFIG;
  if (!b64) {
    process.stderr.write('tsvmm vmm: this process is started by `tsvmm run`, not by hand\n');
    process.exit(2);
  }
  try {
    buildAndRun(VmConfigCodec.decode(Buffer.from(b64, 'base64')), process.env.TSVMM_RESTORE === '1');
  } catch (e) {
    send({ fatal: { message: (e as Error).message } });
    setTimeout(() => process.exit(1), 20);
  }
}

main();
