/**
 * The PVH boot path (Xen's direct-boot ABI, also used by QEMU, Firecracker and
 * Cloud Hypervisor): load an ELF kernel that carries a XEN_ELFNOTE_PHYS32_ENTRY
 * note, and write the struct hvm_start_info (version 1) whose address the
 * kernel finds in EBX at its 32-bit protected-mode entry point.
 *
 * Layouts (xen/include/public/arch-x86/hvm/start_info.h):
 *   hvm_start_info          0x00 magic u32, 0x04 version u32, 0x08 flags u32,
 *                           0x0c nr_modules u32, 0x10 modlist_paddr u64,
 *                           0x18 cmdline_paddr u64, 0x20 rsdp_paddr u64,
 *                           0x28 memmap_paddr u64, 0x30 memmap_entries u32,
 *                           0x34 reserved u32; size 0x38
 *   hvm_memmap_table_entry  0x00 addr u64, 0x08 size u64, 0x10 type u32, 0x14 reserved u32; size 0x18
 *   hvm_modlist_entry       0x00 paddr u64, 0x08 size u64, 0x10 cmdline_paddr u64, 0x18 reserved u64; size 0x20
 */
import { GuestMemory } from '../contracts/memory';
import { encodeCmdline } from './cmdline';
import { parseElf, ElfImage } from './elf';
import {
  CMDLINE_ADDR, CMDLINE_MAX, E820Entry, KERNEL_MIN_ADDR, MAX_MEMMAP_ENTRIES, PVH_START_INFO_ADDR,
} from '../contracts/layout';

export const XEN_ELFNOTE_PHYS32_ENTRY = 18;
export const HVM_START_MAGIC = 0x336ec578;
export const HVM_START_INFO_VERSION = 1;

/** struct hvm_start_info field offsets and size. */
export const START_INFO = {
  magic: 0x00, version: 0x04, flags: 0x08, nr_modules: 0x0c, modlist_paddr: 0x10,
  cmdline_paddr: 0x18, rsdp_paddr: 0x20, memmap_paddr: 0x28, memmap_entries: 0x30, reserved: 0x34,
  size: 0x38,
} as const;

/** struct hvm_memmap_table_entry field offsets and size. */
export const MEMMAP_ENTRY = { addr: 0x00, size: 0x08, type: 0x10, reserved: 0x14, entrySize: 0x18 } as const;

/** struct hvm_modlist_entry field offsets and size. */
export const MODLIST_ENTRY = { paddr: 0x00, size: 0x08, cmdline_paddr: 0x10, reserved: 0x18, entrySize: 0x20 } as const;

/** Where the memmap table and the (single) module entry go: right after start_info, 8-byte aligned. */
export const PVH_MEMMAP_ADDR = PVH_START_INFO_ADDR + START_INFO.size;
export const PVH_MODLIST_ADDR = PVH_MEMMAP_ADDR + MAX_MEMMAP_ENTRIES * MEMMAP_ENTRY.entrySize;
if (PVH_MODLIST_ADDR + MODLIST_ENTRY.entrySize > CMDLINE_ADDR) throw new Error('PVH layout: start_info tables overlap the command line');

export interface StartInfoFields {
  flags: number;
  nrModules: number;
  modlistPaddr: number;
  cmdlinePaddr: number;
  rsdpPaddr: number;
  memmapPaddr: number;
  memmapEntries: number;
}

/** Encode struct hvm_start_info (version 1). */
export function encodeStartInfo(f: StartInfoFields): Buffer {
  const b = Buffer.alloc(START_INFO.size);
  b.writeUInt32LE(HVM_START_MAGIC, START_INFO.magic);
  b.writeUInt32LE(HVM_START_INFO_VERSION, START_INFO.version);
  b.writeUInt32LE(f.flags, START_INFO.flags);
  b.writeUInt32LE(f.nrModules, START_INFO.nr_modules);
  b.writeBigUInt64LE(BigInt(f.modlistPaddr), START_INFO.modlist_paddr);
  b.writeBigUInt64LE(BigInt(f.cmdlinePaddr), START_INFO.cmdline_paddr);
  b.writeBigUInt64LE(BigInt(f.rsdpPaddr), START_INFO.rsdp_paddr);
  b.writeBigUInt64LE(BigInt(f.memmapPaddr), START_INFO.memmap_paddr);
  b.writeUInt32LE(f.memmapEntries, START_INFO.memmap_entries);
  b.writeUInt32LE(0, START_INFO.reserved);
  return b;
}

/** Encode a struct hvm_memmap_table_entry array. */
export function encodeMemmap(entries: readonly E820Entry[]): Buffer {
  const b = Buffer.alloc(entries.length * MEMMAP_ENTRY.entrySize);
  entries.forEach((e, i) => {
    const o = i * MEMMAP_ENTRY.entrySize;
    b.writeBigUInt64LE(BigInt(e.addr), o + MEMMAP_ENTRY.addr);
    b.writeBigUInt64LE(BigInt(e.size), o + MEMMAP_ENTRY.size);
    b.writeUInt32LE(e.type, o + MEMMAP_ENTRY.type);
    b.writeUInt32LE(0, o + MEMMAP_ENTRY.reserved);
  });
  return b;
}

/** Encode one struct hvm_modlist_entry. */
export function encodeModlistEntry(m: { paddr: number; size: number; cmdlinePaddr?: number }): Buffer {
  const b = Buffer.alloc(MODLIST_ENTRY.entrySize);
  b.writeBigUInt64LE(BigInt(m.paddr), MODLIST_ENTRY.paddr);
  b.writeBigUInt64LE(BigInt(m.size), MODLIST_ENTRY.size);
  b.writeBigUInt64LE(BigInt(m.cmdlinePaddr ?? 0), MODLIST_ENTRY.cmdline_paddr);
  return b;
}

const hex = (n: number): string => `0x${n.toString(16)}`;

/** The 32-bit PVH entry point from the kernel's XEN_ELFNOTE_PHYS32_ENTRY note. */
export function pvhEntry(image: ElfImage): number {
  const note = image.notes.find((n) => n.name === 'Xen' && n.type === XEN_ELFNOTE_PHYS32_ENTRY);
  if (!note) throw new Error('kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)');
  let entry: number;
  if (note.desc.length === 4) entry = note.desc.readUInt32LE(0);
  else if (note.desc.length === 8) {
    const v = note.desc.readBigUInt64LE(0);
    if (v > 0xffffffffn) throw new Error(`kernel PVH entry 0x${v.toString(16)} is above 4 GiB; it must be a 32-bit physical address`);
    entry = Number(v);
  } else {
    throw new Error(`kernel PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY) has ${note.desc.length} bytes; expected 4 or 8`);
  }
  return entry;
}

/**
 * Load an ELF kernel for PVH boot: copy each PT_LOAD segment to its physical
 * address (zeroing the bss part) after checking every segment sits at or above
 * 1 MiB and inside guest RAM. Returns the 32-bit entry point.
 */
export function loadPvh(mem: GuestMemory, kernel: Buffer): { entry: number } {
  const image = parseElf(kernel);
  const entry = pvhEntry(image);
  const loads = image.segments.filter((s) => s.memsz > 0);
  if (loads.length === 0) throw new Error('kernel has no loadable segments');
  for (const s of loads) {
    if (s.paddr < KERNEL_MIN_ADDR) {
      throw new Error(`kernel segment ${s.index} at ${hex(s.paddr)} is below 1 MiB, where the boot structures live`);
    }
    if (!mem.contains(s.paddr, s.memsz)) {
      throw new Error(`kernel segment ${s.index} (${hex(s.paddr)}..${hex(s.paddr + s.memsz)}) does not fit in guest RAM (${mem.size / (1024 * 1024)} MiB)`);
    }
  }
  if (!loads.some((s) => entry >= s.paddr && entry < s.paddr + s.memsz)) {
    throw new Error(`kernel PVH entry ${hex(entry)} is not inside any loadable segment`);
  }
  for (const s of loads) {
    const dst = mem.slice(s.paddr, s.memsz);
    dst.set(kernel.subarray(s.offset, s.offset + s.filesz), 0);
    dst.fill(0, s.filesz);
  }
  return { entry };
}

export interface StartInfoOptions {
  cmdline: string;
  memmap: readonly E820Entry[];
  /** Physical address of the ACPI RSDP (0: none). */
  rsdp: number;
  /** An optional initrd already placed in guest memory, passed as module 0. */
  initrd?: { gpa: number; size: number };
}

/**
 * Write hvm_start_info at PVH_START_INFO_ADDR, the memmap after it, the
 * module list (when there is an initrd) and the command line at CMDLINE_ADDR.
 * Returns the start_info address, which the vCPU gets in EBX.
 */
export function writeStartInfo(mem: GuestMemory, opts: StartInfoOptions): number {
  const cmdline = encodeCmdline(opts.cmdline, CMDLINE_MAX);
  if (opts.memmap.length === 0) throw new Error('PVH memmap is empty');
  if (opts.memmap.length > MAX_MEMMAP_ENTRIES) {
    throw new Error(`PVH memmap has ${opts.memmap.length} entries; at most ${MAX_MEMMAP_ENTRIES} fit`);
  }
  if (opts.initrd && !mem.contains(opts.initrd.gpa, opts.initrd.size)) {
    throw new Error(`initrd ${hex(opts.initrd.gpa)}+${hex(opts.initrd.size)} is not in guest RAM`);
  }
  // Clear the whole area so no stale bytes from an earlier boot remain.
  mem.slice(PVH_START_INFO_ADDR, CMDLINE_ADDR + CMDLINE_MAX - PVH_START_INFO_ADDR).fill(0);
  mem.slice(PVH_MEMMAP_ADDR, opts.memmap.length * MEMMAP_ENTRY.entrySize).set(encodeMemmap(opts.memmap));
  if (opts.initrd) {
    mem.slice(PVH_MODLIST_ADDR, MODLIST_ENTRY.entrySize).set(encodeModlistEntry({ paddr: opts.initrd.gpa, size: opts.initrd.size }));
  }
  mem.slice(CMDLINE_ADDR, cmdline.length).set(cmdline);
  mem.slice(PVH_START_INFO_ADDR, START_INFO.size).set(encodeStartInfo({
    flags: 0,
    nrModules: opts.initrd ? 1 : 0,
    modlistPaddr: opts.initrd ? PVH_MODLIST_ADDR : 0,
    cmdlinePaddr: CMDLINE_ADDR,
    rsdpPaddr: opts.rsdp,
    memmapPaddr: PVH_MEMMAP_ADDR,
    memmapEntries: opts.memmap.length,
  }));
  return PVH_START_INFO_ADDR;
}
