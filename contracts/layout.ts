/**
 * Guest physical memory layout: where RAM, the MMIO hole and the fixed boot
 * structures live, the e820 map the guest is told about, and the parsing and
 * validation of the configured memory size.
 *
 *   0x0000_0000 .. 0x0009_FC00   RAM (e820 RAM; boot GDT, zero page, PVH start_info, cmdline, boot page tables)
 *   0x0009_FC00 .. 0x0010_0000   RAM-backed but e820 reserved (EBDA, ACPI tables at 0xE0000)
 *   0x0010_0000 .. low end       RAM (kernel >= 1 MiB)
 *   0xC000_0000 .. 0x1_0000_0000 MMIO hole (test address, virtio-mmio, ACPI GED, IOAPIC, LAPIC)
 *   0x1_0000_0000 ..             RAM above 3 GiB continues here
 */

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;
export const PAGE_SIZE = 4 * KiB;

/**
 * The most vCPUs a VM can have: xAPIC ids are 8 bits, 0xff is the broadcast id and the IOAPIC
 * takes the id after the last vCPU's (ACPI MADT), so ids 0..253 are left for vCPUs.
 */
export const MAX_VCPUS = 254;

/** Start of the MMIO hole; RAM below it starts at 0. */
export const MMIO_HOLE_START = 0xc000_0000;
/** End of the MMIO hole; RAM beyond MMIO_HOLE_START continues here. */
export const MMIO_HOLE_END = 0x1_0000_0000;
/** An address in the hole that is deliberately unbacked (tests poke it). */
export const UNBACKED_TEST_ADDR = 0xc000_0000;

/** virtio-mmio windows: window i is at VIRTIO_MMIO_BASE + i*VIRTIO_MMIO_SIZE, GSI VIRTIO_MMIO_GSI_BASE + i. */
export const VIRTIO_MMIO_BASE = 0xd000_0000;
export const VIRTIO_MMIO_SIZE = 0x1000;
/** Virtqueues per device kind (virtio-blk: one request queue; virtio-net: RX and TX). */
export const VIRTIO_QUEUES = { blk: 1, net: 2 } as const;
export const VIRTIO_MMIO_GSI_BASE = 5;
/** Windows that fit before the IOAPIC (the lead may use fewer). */
export const VIRTIO_MMIO_MAX = 24 - VIRTIO_MMIO_GSI_BASE; // the IOAPIC has 24 pins

/**
 * The ACPI Generic Event Device (vmm/acpi/dsdt.ts, vmm/ged.ts): one interrupt, GSI 3 (ISA IRQ 3,
 * COM2's, which tsvmm does not have: edge, active high as ISA IRQs are), and one 32-bit event
 * register at ACPI_GED_ADDR: it reads as the pending events; writing 1s clears those bits.
 * tsvmm stop sets ACPI_GED_POWER_BUTTON: the guest's _EVT notifies the power button (PNP0C0C).
 */
export const ACPI_GED_ADDR = 0xd100_0000;
/** The window the vmm decodes (the register is its first 4 bytes). */
export const ACPI_GED_SIZE = 0x1000;
export const ACPI_GED_REG_SIZE = 4;
export const ACPI_GED_GSI = 3;
/** Event bits of the GED's register. */
export const ACPI_GED_POWER_BUTTON = 1 << 0;

export const IOAPIC_ADDR = 0xfec0_0000;
export const LAPIC_ADDR = 0xfee0_0000;

/** The legacy area: [0, EBDA_START) is RAM, [EBDA_START, 1 MiB) is reserved. */
export const EBDA_START = 0x9fc00;
export const HIGH_MEMORY_START = 0x10_0000;

/** Boot GDT (flat 32-bit segments for PVH) and an empty IDT. */
export const BOOT_GDT_ADDR = 0x500;
export const BOOT_IDT_ADDR = 0x540;
/** Linux boot protocol zero page (struct boot_params, 4 KiB). */
export const ZERO_PAGE_ADDR = 0x5000;
/** PVH struct hvm_start_info; the memmap table follows it. */
export const PVH_START_INFO_ADDR = 0x6000;
/** Most memmap / e820 entries we ever hand the guest (both boot paths). */
export const MAX_MEMMAP_ENTRIES = 128;
/** Kernel command line and its size limit, NUL included. */
export const CMDLINE_ADDR = 0x7000;
export const CMDLINE_MAX = 4096;
/** bzImage (64-bit boot protocol) identity-mapped page tables: PML4, one PDPT, four PDs of 2 MiB pages (4 GiB). */
export const BOOT_PML4_ADDR = 0x9000;
export const BOOT_PDPT_ADDR = 0xa000;
export const BOOT_PD_ADDR = 0xb000;
export const BOOT_PD_COUNT = 4;
/** ACPI tables live in [ACPI_START, ACPI_END); the RSDP comes first. */
export const ACPI_START = 0xe0000;
export const ACPI_END = 0x10_0000;
export const RSDP_ADDR = ACPI_START;
/** Lowest address a kernel segment may be loaded at. */
export const KERNEL_MIN_ADDR = HIGH_MEMORY_START;

export const MEM_MIN = 16 * MiB;
export const MEM_MAX = 1 * TiB;

/** e820 / hvm_memmap entry types. */
export const E820_RAM = 1;
export const E820_RESERVED = 2;
export const E820_ACPI = 3;

export interface RamRegion {
  gpa: number;
  size: number;
}

export interface E820Entry {
  addr: number;
  size: number;
  type: number;
}

/**
 * Parse a memory size: a byte count (number or decimal string) or a number
 * with a K/M/G/T suffix (binary units, optional trailing "B" or "iB"), e.g.
 * "256M", "1G", "1.5G". Validates the result with `checkMemSize`.
 */
export function parseSize(input: string | number): number {
  let bytes: number;
  if (typeof input === 'number') {
    bytes = input;
  } else {
    const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(input);
    if (!m) throw new Error(`invalid memory size "${input}": expected a number with an optional K, M, G or T suffix, e.g. "256M" or "1G"`);
    const mult: Record<string, number> = { '': 1, k: KiB, m: MiB, g: GiB, t: TiB };
    bytes = Number(m[1]) * mult[m[2].toLowerCase()];
  }
  checkMemSize(bytes, typeof input === 'string' ? `"${input}"` : undefined);
  return bytes;
}

/** Throw a clear error unless `bytes` is a usable guest RAM size. */
export function checkMemSize(bytes: number, shown?: string): void {
  const what = `memory size ${shown ?? String(bytes)}`;
  if (!Number.isSafeInteger(bytes)) throw new Error(`invalid ${what}: not a whole number of bytes`);
  if (bytes < MEM_MIN) throw new Error(`${what} is too small: the minimum is 16M`);
  if (bytes > MEM_MAX) throw new Error(`${what} is too large: the maximum is 1T`);
  if (bytes % PAGE_SIZE !== 0) throw new Error(`${what} is not a multiple of 4K`);
}

/** The guest RAM slots for `memBytes` of RAM: one below 3 GiB, and one from 4 GiB for the rest. */
export function ramRegions(memBytes: number): RamRegion[] {
  checkMemSize(memBytes);
  const low = Math.min(memBytes, MMIO_HOLE_START);
  const regions: RamRegion[] = [{ gpa: 0, size: low }];
  if (memBytes > low) regions.push({ gpa: MMIO_HOLE_END, size: memBytes - low });
  return regions;
}

/** The e820 map (also the PVH memmap) for `memBytes` of RAM, sorted by address. */
export function e820(memBytes: number): E820Entry[] {
  const [low, high] = ramRegions(memBytes);
  const entries: E820Entry[] = [
    { addr: 0, size: EBDA_START, type: E820_RAM },
    { addr: EBDA_START, size: HIGH_MEMORY_START - EBDA_START, type: E820_RESERVED },
    { addr: HIGH_MEMORY_START, size: low.size - HIGH_MEMORY_START, type: E820_RAM },
  ];
  if (high) entries.push({ addr: high.gpa, size: high.size, type: E820_RAM });
  return entries;
}

/** The end (exclusive) of RAM below the MMIO hole. */
export function lowRamEnd(memBytes: number): number {
  return ramRegions(memBytes)[0].size;
}

/** virtio-mmio window i: its base address and GSI. */
export function virtioMmioWindow(i: number): { base: number; gsi: number } {
  if (!Number.isInteger(i) || i < 0 || i >= VIRTIO_MMIO_MAX) {
    throw new Error(`virtio-mmio window ${i} out of range: there are ${VIRTIO_MMIO_MAX} windows (0..${VIRTIO_MMIO_MAX - 1})`);
  }
  return { base: VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE, gsi: VIRTIO_MMIO_GSI_BASE + i };
}
