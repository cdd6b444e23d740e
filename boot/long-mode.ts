/**
 * The CPU and memory state for entering a bzImage at its 64-bit entry point
 * (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): long mode with
 * paging on, identity-mapped page tables covering the kernel, the zero page,
 * the command line and the initrd, a GDT whose selector 0x10 is a flat
 * 64-bit code segment and 0x18 a flat data segment, interrupts off, and RSI
 * pointing at struct boot_params.
 *
 * Page tables (all in low RAM, see layout.ts): PML4 at BOOT_PML4_ADDR -> one
 * PDPT at BOOT_PDPT_ADDR -> BOOT_PD_COUNT page directories of 2 MiB pages,
 * identity-mapping [0, 4 GiB). The kernel replaces them early in startup_64.
 */
import { GuestMemory } from '../contracts/memory';
import {
  BOOT_DATA, BOOT_LDT, BOOT_TSS, CR0_ET, CR0_PE, DescriptorTable, PvhCpuState, SegmentDescriptor, encodeGdtEntry,
  BOOT_CS_SELECTOR,
} from './cpu-state';
import { BOOT_GDT_ADDR, BOOT_IDT_ADDR, BOOT_PD_ADDR, BOOT_PD_COUNT, BOOT_PDPT_ADDR, BOOT_PML4_ADDR, PAGE_SIZE } from '../contracts/layout';

export const CR0_PG = 0x8000_0000;
export const CR4_PAE = 1 << 5;
export const EFER_LME = 1 << 8;
export const EFER_LMA = 1 << 10;

const PTE_P = 1n << 0n;
const PTE_RW = 1n << 1n;
const PTE_PS = 1n << 7n;
const TWO_MIB = 2 * 1024 * 1024;

/** The 64-bit code segment (L=1, D=0), selector 0x10. */
export const BOOT_CODE64: Readonly<SegmentDescriptor> = Object.freeze({
  base: 0, limit: 0xffffffff, selector: BOOT_CS_SELECTOR, type: 0xb, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0,
});

/** GDT slots: null, unused, code64 (0x10), data (0x18), TSS (0x20, a 16-byte system descriptor: two slots). */
const GDT64_SLOTS: readonly (Readonly<SegmentDescriptor> | null)[] = [null, null, BOOT_CODE64, BOOT_DATA, BOOT_TSS, null];
export const BOOT_GDT64_LIMIT = GDT64_SLOTS.length * 8 - 1;
if (BOOT_GDT_ADDR + GDT64_SLOTS.length * 8 > BOOT_IDT_ADDR) throw new Error('64-bit boot GDT overlaps the boot IDT');

/** The state a 64-bit kernel entry gets: PvhCpuState's fields plus RSI (the zero page). */
export interface LongModeCpuState extends PvhCpuState {
  rsi: number;
}

/** Write the identity-mapped page tables for [0, BOOT_PD_COUNT GiB). Returns CR3. */
export function writeIdentityPageTables(mem: GuestMemory): number {
  const pml4 = Buffer.alloc(PAGE_SIZE);
  pml4.writeBigUInt64LE(BigInt(BOOT_PDPT_ADDR) | PTE_P | PTE_RW, 0);
  const pdpt = Buffer.alloc(PAGE_SIZE);
  const pds = Buffer.alloc(PAGE_SIZE * BOOT_PD_COUNT);
  for (let i = 0; i < BOOT_PD_COUNT; i++) {
    pdpt.writeBigUInt64LE(BigInt(BOOT_PD_ADDR + i * PAGE_SIZE) | PTE_P | PTE_RW, i * 8);
    for (let j = 0; j < 512; j++) {
      pds.writeBigUInt64LE(BigInt((i * 512 + j) * TWO_MIB) | PTE_P | PTE_RW | PTE_PS, (i * 512 + j) * 8);
    }
  }
  mem.slice(BOOT_PML4_ADDR, PAGE_SIZE).set(pml4);
  mem.slice(BOOT_PDPT_ADDR, PAGE_SIZE).set(pdpt);
  mem.slice(BOOT_PD_ADDR, pds.length).set(pds);
  return BOOT_PML4_ADDR;
}

/** Write the 64-bit boot GDT at BOOT_GDT_ADDR and a zero IDT at BOOT_IDT_ADDR. */
export function writeBootGdt64(mem: GuestMemory): DescriptorTable {
  const gdt = Buffer.alloc(GDT64_SLOTS.length * 8);
  GDT64_SLOTS.forEach((d, i) => gdt.writeBigUInt64LE(d ? encodeGdtEntry(d) : 0n, i * 8));
  mem.slice(BOOT_GDT_ADDR, gdt.length).set(gdt);
  mem.slice(BOOT_IDT_ADDR, 8).fill(0);
  return { base: BOOT_GDT_ADDR, limit: BOOT_GDT64_LIMIT };
}

/**
 * Write the page tables and GDT, and return the vCPU state for the 64-bit
 * entry point `entry64` with RSI = `zeroPage`.
 */
export function setupLongMode(mem: GuestMemory, entry64: number, zeroPage: number): LongModeCpuState {
  const cr3 = writeIdentityPageTables(mem);
  const gdt = writeBootGdt64(mem);
  const seg = (d: Readonly<SegmentDescriptor>): SegmentDescriptor => ({ ...d });
  return {
    rip: entry64, rbx: 0, rsi: zeroPage, rflags: 0x2,
    cr0: (CR0_PE | CR0_ET | CR0_PG) >>> 0,
    cr3,
    cr4: CR4_PAE,
    efer: EFER_LME | EFER_LMA,
    cs: seg(BOOT_CODE64),
    ds: seg(BOOT_DATA), es: seg(BOOT_DATA), fs: seg(BOOT_DATA), gs: seg(BOOT_DATA), ss: seg(BOOT_DATA),
    tr: seg(BOOT_TSS),
    ldt: seg(BOOT_LDT),
    gdt,
    idt: { base: BOOT_IDT_ADDR, limit: 0 },
  };
}
