/**
 * The vmm process: owns /dev/kvm. Builds the VM from the VmConfig the
 * supervisor passed (guest RAM and state pages come in as fds), loads the
 * kernel, starts one worker thread per vCPU and reports the guest's exit.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { ComponentMessage, ComponentMessageCodec, VmConfig, VmConfigCodec } from '../proto';
import { native } from '../native/kvm';
import { Kvm } from './kvm/system';
import { Vm } from './kvm/vm';
import { Regs, Sregs, Segment } from './kvm/structs';
import { e820 } from './boot/layout';
import { loadPvh, writeStartInfo } from './boot/pvh';
import { pvhCpuState, writeBootGdt, SegmentDescriptor } from './boot/cpu-state';
import { mapGuestRam } from './guest-ram';
import { buildAcpi } from './acpi';
import { FD } from './fds';
import { PLATFORM_PAGE_SIZE, PlatformPage } from './platform-page';
import { Serial } from './serial';
import type { VcpuThreadData, VcpuThreadMessage } from './vcpu-thread';

/** Where KVM puts its real-mode TSS and identity map (below the LAPIC, above the IOAPIC). */
const KVM_TSS_ADDR = 0xfffbd000;
const KVM_IDENTITY_MAP_ADDR = 0xfffbc000;

function send(msg: ComponentMessage): void {
  process.send?.({ pb: Buffer.from(ComponentMessageCodec.encode(msg)).toString('base64') });
}

function seg(d: SegmentDescriptor): Segment {
  return { ...d, base: BigInt(d.base) };
}

function bootState(entry: number, startInfo: number): { regs: Partial<Regs>; sregs: Partial<Sregs> } {
  const s = pvhCpuState(entry, startInfo);
  return {
    regs: { rip: BigInt(s.rip), rbx: BigInt(s.rbx), rflags: BigInt(s.rflags) },
    sregs: {
      cs: seg(s.cs), ds: seg(s.ds), es: seg(s.es), fs: seg(s.fs), gs: seg(s.gs), ss: seg(s.ss), tr: seg(s.tr), ldt: seg(s.ldt),
      gdt: { base: BigInt(s.gdt.base), limit: s.gdt.limit }, idt: { base: BigInt(s.idt.base), limit: s.idt.limit },
      cr0: BigInt(s.cr0), cr3: BigInt(s.cr3), cr4: BigInt(s.cr4), efer: BigInt(s.efer),
    },
  };
}

export function buildAndRun(cfg: VmConfig): void {
  const kvm = Kvm.open();
  const vm = new Vm(kvm.createVm());
  vm.setTssAddr(KVM_TSS_ADDR);
  vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDR);
  vm.createIrqchip();
  vm.createPit2();

  const ram = mapGuestRam(FD.RAM, cfg.memBytes);
  ram.slots.forEach((s, i) => vm.setUserMemoryRegion(i, s.gpa, s.host));

  const kernel = fs.readFileSync(cfg.kernel);
  const { entry } = loadPvh(ram.memory, kernel);
  writeBootGdt(ram.memory);
  // The guest learns its CPUs and devices from ACPI, as Linux does.
  const rsdp = buildAcpi(ram.memory, { cpus: cfg.cpus, virtio: [] });
  const startInfo = writeStartInfo(ram.memory, { cmdline: cfg.cmdline, memmap: e820(cfg.memBytes), rsdp });

  const page = new PlatformPage(native.mmap(FD.STATE, PLATFORM_PAGE_SIZE, 0, true));
  page.check();

  const supported = kvm.supportedCpuid();
  const counters = new SharedArrayBuffer(64 * 8);
  let finished = false;
  const finish = (msg: ComponentMessage, code: number) => {
    if (finished) return;
    finished = true;
    send(msg);
    // Give the IPC message a moment to flush, then stop every vCPU thread with the process.
    setTimeout(() => process.exit(code), 20);
  };
  const vcpuFds = Array.from({ length: cfg.cpus }, (_, id) => vm.createVcpu(id));
  for (let id = 0; id < cfg.cpus; id++) {
    const data: VcpuThreadData = {
      vmFd: vm.fd, vcpuFd: vcpuFds[id], id, mmapSize: kvm.vcpuMmapSize(), supportedCpuid: supported, cpus: cfg.cpus,
      boot: id === 0 ? bootState(entry, startInfo) : undefined,
      stateFd: FD.STATE, outFd: FD.SERIAL_OUT, counters,
    };
    const w = new Worker(path.join(__dirname, 'vcpu-thread.js'), { workerData: data });
    w.on('message', (m: VcpuThreadMessage) => {
      if (m.kind === 'exit') finish({ guestExit: { code: m.code, reason: m.reason } }, 0);
      else if (m.kind === 'fatal') finish({ fatal: { message: m.message } }, 0);
    });
    w.on('error', (e) => finish({ fatal: { message: `vCPU ${id} thread failed: ${e.message}` } }, 1));
  }

  // Terminal input -> the UART's receive ring.
  const serial = new Serial(page, () => undefined, () => { vm.irqLine(4, 1); vm.irqLine(4, 0); });
  process.stdin.on('data', (chunk: Buffer) => { page.rxPush(chunk); serial.inputArrived(); });
  process.stdin.on('error', () => undefined);

  send({ ready: { component: 'vmm', pid: process.pid } });
}

function main(): void {
  const b64 = process.env.TSVMM_CONFIG;
  if (!b64) {
    process.stderr.write('tsvmm vmm: this process is started by `tsvmm run`, not by hand\n');
    process.exit(2);
  }
  try {
    buildAndRun(VmConfigCodec.decode(Buffer.from(b64, 'base64')));
  } catch (e) {
    send({ fatal: { message: (e as Error).message } });
    setTimeout(() => process.exit(1), 20);
  }
}

main();
