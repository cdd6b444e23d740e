/**
 * The initial vCPU state for a PVH entry, as plain data: 32-bit protected
 * mode, paging off, flat 4 GiB segments, RIP = the PVH entry point and
 * RBX = the hvm_start_info address. The fields mirror struct kvm_segment /
 * kvm_regs / kvm_sregs so the caller can copy them across one to one.
 *
 * The same descriptors are also written as a GDT in guest memory (at
 * BOOT_GDT_ADDR) so that a segment reload before the kernel installs its own
 * GDT finds what the hidden segment state already says.
 */
import { GuestMemory } from '../contracts/memory';
import { BOOT_GDT_ADDR, BOOT_IDT_ADDR } from '../contracts/layout';

/** A segment register as KVM describes it (struct kvm_segment). Flags are 0 or 1. */
export interface SegmentDescriptor {
  base: number;
  /** Byte-granular limit (KVM's convention: 0xffffffff for a 4 GiB page-granular segment). */
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

/** A descriptor table register (struct kvm_dtable). */
export interface DescriptorTable {
  base: number;
  limit: number;
}

export interface PvhCpuState {
  /** kvm_regs */
  rip: number;
  rbx: number;
  rflags: number;
  /** kvm_sregs */
  cr0: number;
  cr3: number;
  cr4: number;
  efer: number;
  cs: SegmentDescriptor;
  ds: SegmentDescriptor;
  es: SegmentDescriptor;
  fs: SegmentDescriptor;
  gs: SegmentDescriptor;
  ss: SegmentDescriptor;
  tr: SegmentDescriptor;
  ldt: SegmentDescriptor;
  gdt: DescriptorTable;
  idt: DescriptorTable;
}

export const CR0_PE = 1 << 0;
export const CR0_ET = 1 << 4;

export const BOOT_CS_SELECTOR = 0x10;
export const BOOT_DS_SELECTOR = 0x18;
export const BOOT_TR_SELECTOR = 0x20;

export const BOOT_CODE: Readonly<SegmentDescriptor> = Object.freeze({
  base: 0, limit: 0xffffffff, selector: BOOT_CS_SELECTOR, type: 0xb, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0,
});
export const BOOT_DATA: Readonly<SegmentDescriptor> = Object.freeze({
  base: 0, limit: 0xffffffff, selector: BOOT_DS_SELECTOR, type: 0x3, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0,
});
/** A busy 32-bit TSS (type 0xb), 104 bytes, byte granular. */
export const BOOT_TSS: Readonly<SegmentDescriptor> = Object.freeze({
  base: 0, limit: 0x67, selector: BOOT_TR_SELECTOR, type: 0xb, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0,
});
export const BOOT_LDT: Readonly<SegmentDescriptor> = Object.freeze({
  base: 0, limit: 0, selector: 0, type: 0x2, present: 0, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 1,
});

/** GDT slots: null, unused, code (0x10), data (0x18), TSS (0x20). */
if (BOOT_GDT_ADDR + 5 * 8 > BOOT_IDT_ADDR) throw new Error('boot GDT overlaps the boot IDT');
const GDT_SLOTS: readonly (Readonly<SegmentDescriptor> | null)[] = [null, null, BOOT_CODE, BOOT_DATA, BOOT_TSS];
export const BOOT_GDT_LIMIT = GDT_SLOTS.length * 8 - 1;

/** The register state for entering a PVH kernel at `entry` with start_info at `startInfo`. */
export function pvhCpuState(entry: number, startInfo: number): PvhCpuState {
  const seg = (d: Readonly<SegmentDescriptor>): SegmentDescriptor => ({ ...d });
  return {
    rip: entry, rbx: startInfo, rflags: 0x2,
    cr0: CR0_PE | CR0_ET,
    cr3: 0,
    cr4: 0,
    efer: 0,
    cs: seg(BOOT_CODE),
    ds: seg(BOOT_DATA), es: seg(BOOT_DATA), fs: seg(BOOT_DATA), gs: seg(BOOT_DATA), ss: seg(BOOT_DATA),
    tr: seg(BOOT_TSS),
    ldt: seg(BOOT_LDT),
    gdt: { base: BOOT_GDT_ADDR, limit: BOOT_GDT_LIMIT },
    idt: { base: BOOT_IDT_ADDR, limit: 0 },
  };
}

/** Encode a segment as an 8-byte GDT descriptor (the inverse of what the CPU loads). */
export function encodeGdtEntry(d: Readonly<SegmentDescriptor>): bigint {
  const limit = d.g ? Math.floor(d.limit / 4096) : d.limit;
  if (limit > 0xfffff) throw new Error(`segment limit 0x${d.limit.toString(16)} does not fit a descriptor with g=${d.g}`);
  const access = (d.present << 7) | (d.dpl << 5) | (d.s << 4) | d.type;
  const flags = (d.g << 3) | (d.db << 2) | (d.l << 1) | d.avl;
  const base = BigInt(d.base >>> 0);
  return (BigInt(limit & 0xffff))
    | ((base & 0xffffffn) << 16n)
    | (BigInt(access) << 40n)
    | (BigInt(limit >>> 16) << 48n)
    | (BigInt(flags) << 52n)
    | ((base >> 24n) << 56n);
}

/** Write the boot GDT at BOOT_GDT_ADDR and a zero IDT at BOOT_IDT_ADDR. */
export function writeBootGdt(mem: GuestMemory): void {
  const gdt = Buffer.alloc(GDT_SLOTS.length * 8);
  GDT_SLOTS.forEach((d, i) => gdt.writeBigUInt64LE(d ? encodeGdtEntry(d) : 0n, i * 8));
  mem.slice(BOOT_GDT_ADDR, gdt.length).set(gdt);
  mem.slice(BOOT_IDT_ADDR, 8).fill(0);
}
