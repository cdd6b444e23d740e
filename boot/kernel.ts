/**
 * One entry point for loading whatever `--kernel` names: a bzImage (the Linux
 * x86 boot protocol, entered at its 64-bit entry point in long mode) or an
 * ELF with a PVH entry note (an uncompressed vmlinux or the test guest,
 * entered in 32-bit protected mode). The format is told by magic: "HdrS" at
 * 0x202 is a bzImage, "\x7fELF" at 0 is an ELF.
 */
import type { Regs, Sregs, Segment } from '../kvm/structs';
import { GuestMemory } from '../contracts/memory';
import { loadBzImage, HDR, HDRS_MAGIC, BOOT_FLAG, parseBzImage } from './bzimage';
import { pvhCpuState, writeBootGdt, SegmentDescriptor } from './cpu-state';
import { parseElf } from './elf';
import { e820, lowRamEnd, PAGE_SIZE } from '../contracts/layout';
import { setupLongMode, LongModeCpuState } from './long-mode';
import { loadPvh, pvhEntry, writeStartInfo } from './pvh';

export type KernelFormat = 'bzimage' | 'pvh';

const hex = (n: number): string => `0x${n.toString(16)}`;

function isElf(buf: Buffer): boolean {
  return buf.length >= 4 && buf[0] === 0x7f && buf[1] === 0x45 && buf[2] === 0x4c && buf[3] === 0x46;
}

/**
 * Which boot path `buf` takes, after checking it fully (every problem is a
 * one-line Error). A file that looks like neither gets the ELF parser's
 * error unless it carries a boot sector (0xaa55 at 0x1fe), in which case it
 * gets the bzImage parser's.
 */
export function checkKernel(buf: Buffer): KernelFormat {
  if (isElf(buf)) {
    pvhEntry(parseElf(buf));
    return 'pvh';
  }
  const hasHdrS = buf.length >= HDR.header + 4 && buf.readUInt32LE(HDR.header) === HDRS_MAGIC;
  const hasBootSector = buf.length >= HDR.boot_flag + 2 && buf.readUInt16LE(HDR.boot_flag) === BOOT_FLAG;
  if (hasHdrS || hasBootSector) {
    parseBzImage(buf);
    return 'bzimage';
  }
  try {
    parseElf(buf);
  } catch (e) {
    throw new Error(`neither a bzImage nor an ELF kernel: ${(e as Error).message}`);
  }
  return 'pvh'; // unreachable: parseElf rejects anything without the ELF magic
}

/** XEN_ELFNOTE_GUEST_OS: a string naming the guest OS ("linux" for Linux). */
const XEN_ELFNOTE_GUEST_OS = 6;

/**
 * True when `buf` is a Linux kernel: any bzImage, or an ELF that carries a
 * "Linux" note or a Xen GUEST_OS note saying "linux" (a vmlinux has both).
 */
export function isLinuxKernel(buf: Buffer): boolean {
  if (!isElf(buf)) return buf.length >= HDR.header + 4 && buf.readUInt32LE(HDR.header) === HDRS_MAGIC;
  try {
    return parseElf(buf).notes.some((n) => n.name === 'Linux'
      || (n.name === 'Xen' && n.type === XEN_ELFNOTE_GUEST_OS && n.desc.toString('latin1').replace(/\0+$/, '').toLowerCase() === 'linux'));
  } catch {
    return false;
  }
}

export interface LoadKernelOptions {
  cmdline: string;
  initrd?: Buffer;
  memBytes: number;
  /** ACPI RSDP address (0: none). */
  rsdp: number;
}

/** The boot vCPU's state as plain numbers (kvm_regs / kvm_sregs fields). */
export type BootCpuState = LongModeCpuState;

export interface LoadedKernel {
  format: KernelFormat;
  cpu: BootCpuState;
  initrd?: { gpa: number; size: number };
}

/**
 * Place an initrd for PVH (module 0): the highest page-aligned spot below the
 * end of low RAM, above the kernel's last segment.
 */
export function placePvhInitrd(memBytes: number, kernelEnd: number, size: number): number {
  const top = lowRamEnd(memBytes);
  const gpa = Math.floor((top - size) / PAGE_SIZE) * PAGE_SIZE;
  if (size > top || gpa < kernelEnd) {
    throw new Error(`initrd of ${size} bytes does not fit between the kernel (ends ${hex(kernelEnd)}) and the end of low RAM (${hex(top)}): give the guest more --mem`);
  }
  return gpa;
}

/** Load `kernel` (either format) with its command line, initrd and memory map, and return the boot vCPU state. */
export function loadKernel(mem: GuestMemory, kernel: Buffer, opts: LoadKernelOptions): LoadedKernel {
  const format = checkKernel(kernel);
  const memmap = e820(opts.memBytes);
  if (format === 'bzimage') {
    const r = loadBzImage(mem, kernel, { cmdline: opts.cmdline, initrd: opts.initrd, e820: memmap, rsdp: opts.rsdp });
    return { format, cpu: setupLongMode(mem, r.entry64, r.zeroPage), initrd: r.initrd };
  }
  const { entry } = loadPvh(mem, kernel);
  writeBootGdt(mem);
  let initrd: { gpa: number; size: number } | undefined;
  if (opts.initrd && opts.initrd.length > 0) {
    const kernelEnd = Math.max(...parseElf(kernel).segments.filter((s) => s.memsz > 0).map((s) => s.paddr + s.memsz));
    initrd = { gpa: placePvhInitrd(opts.memBytes, kernelEnd, opts.initrd.length), size: opts.initrd.length };
    mem.slice(initrd.gpa, initrd.size).set(opts.initrd);
  }
  const startInfo = writeStartInfo(mem, { cmdline: opts.cmdline, memmap, rsdp: opts.rsdp, initrd });
  return { format, cpu: { ...pvhCpuState(entry, startInfo), rsi: 0 }, initrd };
}

function seg(d: SegmentDescriptor): Segment {
  return { ...d, base: BigInt(d.base) };
}

/** The boot state as KVM_SET_REGS / KVM_SET_SREGS fields. */
export function kvmBootState(s: BootCpuState): { regs: Partial<Regs>; sregs: Partial<Sregs> } {
  return {
    regs: { rip: BigInt(s.rip), rbx: BigInt(s.rbx), rsi: BigInt(s.rsi), rflags: BigInt(s.rflags) },
    sregs: {
      cs: seg(s.cs), ds: seg(s.ds), es: seg(s.es), fs: seg(s.fs), gs: seg(s.gs), ss: seg(s.ss), tr: seg(s.tr), ldt: seg(s.ldt),
      gdt: { base: BigInt(s.gdt.base), limit: s.gdt.limit }, idt: { base: BigInt(s.idt.base), limit: s.idt.limit },
      cr0: BigInt(s.cr0), cr3: BigInt(s.cr3), cr4: BigInt(s.cr4), efer: BigInt(s.efer),
    },
  };
}
