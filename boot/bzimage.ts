/**
 * The Linux x86 boot protocol (Documentation/arch/x86/boot.rst) for a bzImage,
 * entered at its 64-bit entry point: parse and check the setup header, load
 * the protected-mode kernel at pref_address, place the command line and the
 * initrd, and build the zero page (struct boot_params). The caller enters at
 * `entry64` in long mode with RSI = `zeroPage` (identity-mapped page tables
 * covering the kernel, the zero page, the command line and the initrd).
 *
 * Offsets used in boot_params (all absolute within the 4 KiB zero page):
 *   0x070 acpi_rsdp_addr u64   0x0c0 ext_ramdisk_image u32   0x0c4 ext_ramdisk_size u32
 *   0x0c8 ext_cmd_line_ptr u32 0x1e8 e820_entries u8          0x1f1 setup header ...
 *   0x2d0 e820_table[128] of { addr u64, size u64, type u32 } (20 bytes each, packed)
 */
import { GuestMemory } from '../contracts/memory';
import { encodeCmdline } from './cmdline';
import {
  CMDLINE_ADDR, CMDLINE_MAX, E820Entry, KERNEL_MIN_ADDR, MAX_MEMMAP_ENTRIES, PAGE_SIZE, ZERO_PAGE_ADDR,
} from '../contracts/layout';

/** Setup header field offsets (absolute, in the bzImage file and in boot_params). */
export const HDR = {
  setup_sects: 0x1f1, root_flags: 0x1f2, syssize: 0x1f4, vid_mode: 0x1fa, boot_flag: 0x1fe, jump: 0x200,
  header: 0x202, version: 0x206, type_of_loader: 0x210, loadflags: 0x211, code32_start: 0x214,
  ramdisk_image: 0x218, ramdisk_size: 0x21c, heap_end_ptr: 0x224, cmd_line_ptr: 0x228,
  initrd_addr_max: 0x22c, kernel_alignment: 0x230, relocatable_kernel: 0x234, min_alignment: 0x235,
  xloadflags: 0x236, cmdline_size: 0x238, pref_address: 0x258, init_size: 0x260, end: 0x26c,
} as const;

/** boot_params fields outside the setup header. */
export const BOOT_PARAMS = {
  acpi_rsdp_addr: 0x070, ext_ramdisk_image: 0x0c0, ext_ramdisk_size: 0x0c4, ext_cmd_line_ptr: 0x0c8,
  e820_entries: 0x1e8, hdr: 0x1f1, hdr_max_end: 0x290, e820_table: 0x2d0, e820_entry_size: 20, size: 0x1000,
} as const;

export const HDRS_MAGIC = 0x53726448; // "HdrS"
export const BOOT_FLAG = 0xaa55;
export const MIN_BOOT_PROTOCOL = 0x020c; // 2.12: xloadflags, 64-bit entry
export const LOADED_HIGH = 0x01;
export const XLF_KERNEL_64 = 0x01;
export const XLF_CAN_BE_LOADED_ABOVE_4G = 0x02;

export interface SetupHeader {
  setupSects: number;
  /** Bytes of real-mode setup code (boot sector included); the 64-bit kernel follows. */
  setupSize: number;
  version: number;
  loadflags: number;
  kernelAlignment: number;
  relocatable: boolean;
  xloadflags: number;
  cmdlineSize: number;
  initrdAddrMax: number;
  prefAddress: number;
  initSize: number;
  /** Bytes of setup header present in the file (from 0x1f1). */
  headerLength: number;
}

const hex = (n: number): string => `0x${n.toString(16)}`;
const ver = (v: number): string => `${v >> 8}.${(v & 0xff).toString().padStart(2, '0')}`;

/** Parse and check the setup header of a bzImage; every problem gives a one-line error. */
export function parseBzImage(kernel: Buffer): SetupHeader {
  if (kernel.length < HDR.end) {
    throw new Error(`bzImage truncated: ${kernel.length} bytes, the setup header needs ${HDR.end}`);
  }
  if (kernel.readUInt32LE(HDR.header) !== HDRS_MAGIC) {
    throw new Error('not a bzImage: no "HdrS" setup header magic at 0x202');
  }
  if (kernel.readUInt16LE(HDR.boot_flag) !== BOOT_FLAG) {
    throw new Error(`not a bzImage: boot_flag at 0x1fe is ${hex(kernel.readUInt16LE(HDR.boot_flag))}, expected 0xaa55`);
  }
  const version = kernel.readUInt16LE(HDR.version);
  if (version < MIN_BOOT_PROTOCOL) {
    throw new Error(`kernel boot protocol ${ver(version)} is too old: 2.12 or newer is needed for the 64-bit entry point`);
  }
  const loadflags = kernel[HDR.loadflags];
  if (!(loadflags & LOADED_HIGH)) throw new Error('kernel is a zImage (loadflags.LOADED_HIGH clear): only bzImage is supported');
  const xloadflags = kernel.readUInt16LE(HDR.xloadflags);
  if (!(xloadflags & XLF_KERNEL_64)) throw new Error('kernel has no 64-bit entry point (xloadflags.XLF_KERNEL_64 clear)');
  const setupSects = kernel[HDR.setup_sects] || 4;
  const setupSize = (setupSects + 1) * 512;
  if (setupSize >= kernel.length) {
    throw new Error(`bzImage truncated: setup code (${setupSects} sectors) ends at ${hex(setupSize)}, past the end of the ${kernel.length}-byte file`);
  }
  const syssize = kernel.readUInt32LE(HDR.syssize);
  if (syssize !== 0 && setupSize + syssize * 16 > kernel.length) {
    throw new Error(`bzImage truncated: the header says the kernel ends at ${hex(setupSize + syssize * 16)} (syssize), the file has ${kernel.length} bytes`);
  }
  const headerLength = Math.min(0x202 + kernel[HDR.jump + 1], BOOT_PARAMS.hdr_max_end) - HDR.setup_sects;
  const kernelAlignment = kernel.readUInt32LE(HDR.kernel_alignment);
  const relocatable = kernel[HDR.relocatable_kernel] !== 0;
  if (relocatable && (kernelAlignment === 0 || (kernelAlignment & (kernelAlignment - 1)) !== 0)) {
    throw new Error(`kernel_alignment ${hex(kernelAlignment)} is not a power of two`);
  }
  const prefAddress64 = kernel.readBigUInt64LE(HDR.pref_address);
  if (prefAddress64 >= 0x1_0000_0000n) throw new Error(`kernel pref_address 0x${prefAddress64.toString(16)} is above 4 GiB`);
  const prefAddress = Number(prefAddress64);
  if (prefAddress < KERNEL_MIN_ADDR) throw new Error(`kernel pref_address ${hex(prefAddress)} is below 1 MiB`);
  return {
    setupSects, setupSize, version, loadflags, kernelAlignment, relocatable, xloadflags,
    cmdlineSize: kernel.readUInt32LE(HDR.cmdline_size),
    initrdAddrMax: kernel.readUInt32LE(HDR.initrd_addr_max),
    prefAddress,
    initSize: kernel.readUInt32LE(HDR.init_size),
    headerLength,
  };
}

export interface BzImageOptions {
  cmdline: string;
  initrd?: Buffer;
  e820: readonly E820Entry[];
  /** ACPI RSDP address for boot_params.acpi_rsdp_addr (protocol 2.14+); 0 or absent: none. */
  rsdp?: number;
}

export interface BzImageLoad {
  /** 64-bit entry point: load address + 0x200. */
  entry64: number;
  /** Zero page address, for RSI. */
  zeroPage: number;
  /** Where the protected-mode kernel was loaded. */
  loadAddr: number;
  initrd?: { gpa: number; size: number };
  header: SetupHeader;
}

/** Encode the e820 table as boot_params stores it (20-byte packed entries). */
export function encodeBootE820(entries: readonly E820Entry[]): Buffer {
  const b = Buffer.alloc(entries.length * BOOT_PARAMS.e820_entry_size);
  entries.forEach((e, i) => {
    const o = i * BOOT_PARAMS.e820_entry_size;
    b.writeBigUInt64LE(BigInt(e.addr), o);
    b.writeBigUInt64LE(BigInt(e.size), o + 8);
    b.writeUInt32LE(e.type, o + 16);
  });
  return b;
}

/** Load a bzImage for the 64-bit boot protocol and build its zero page. */
export function loadBzImage(mem: GuestMemory, kernel: Buffer, opts: BzImageOptions): BzImageLoad {
  const hdr = parseBzImage(kernel);
  if (opts.e820.length === 0 || opts.e820.length > MAX_MEMMAP_ENTRIES) {
    throw new Error(`e820 map has ${opts.e820.length} entries; 1..${MAX_MEMMAP_ENTRIES} fit in the zero page`);
  }
  const cmdline = encodeCmdline(opts.cmdline, Math.min(hdr.cmdlineSize + 1, CMDLINE_MAX));

  // The protected-mode kernel goes at pref_address; it needs init_size bytes there to decompress.
  const payload = kernel.subarray(hdr.setupSize);
  const loadAddr = hdr.prefAddress;
  const footprint = Math.max(hdr.initSize, payload.length);
  if (!mem.contains(loadAddr, footprint)) {
    throw new Error(`kernel needs ${hex(loadAddr)}..${hex(loadAddr + footprint)} (init_size ${hex(hdr.initSize)}) but that is not all guest RAM (${mem.size / (1024 * 1024)} MiB)`);
  }

  let initrd: { gpa: number; size: number } | undefined;
  if (opts.initrd && opts.initrd.length > 0) {
    // Highest page-aligned spot under initrd_addr_max inside the RAM region that holds the kernel.
    const region = mem.regions.find((r) => loadAddr >= r.gpa && loadAddr < r.gpa + r.bytes.length)!;
    const top = Math.min(region.gpa + region.bytes.length, hdr.initrdAddrMax + 1);
    const gpa = Math.floor((top - opts.initrd.length) / PAGE_SIZE) * PAGE_SIZE;
    if (gpa < loadAddr + footprint) {
      throw new Error(`initrd of ${opts.initrd.length} bytes does not fit between the kernel (ends ${hex(loadAddr + footprint)}) and ${hex(top)}`);
    }
    initrd = { gpa, size: opts.initrd.length };
  }

  // Everything checked: now write.
  const zp = Buffer.alloc(BOOT_PARAMS.size);
  kernel.copy(zp, BOOT_PARAMS.hdr, HDR.setup_sects, HDR.setup_sects + hdr.headerLength);
  zp[HDR.type_of_loader] = 0xff;
  zp.writeUInt32LE(CMDLINE_ADDR, HDR.cmd_line_ptr);
  zp.writeUInt32LE(0, BOOT_PARAMS.ext_cmd_line_ptr);
  zp.writeUInt32LE(initrd ? initrd.gpa % 0x1_0000_0000 : 0, HDR.ramdisk_image);
  zp.writeUInt32LE(initrd ? initrd.size % 0x1_0000_0000 : 0, HDR.ramdisk_size);
  zp.writeUInt32LE(initrd ? Math.floor(initrd.gpa / 0x1_0000_0000) : 0, BOOT_PARAMS.ext_ramdisk_image);
  zp.writeUInt32LE(initrd ? Math.floor(initrd.size / 0x1_0000_0000) : 0, BOOT_PARAMS.ext_ramdisk_size);
  zp.writeBigUInt64LE(BigInt(opts.rsdp ?? 0), BOOT_PARAMS.acpi_rsdp_addr);
  zp[BOOT_PARAMS.e820_entries] = opts.e820.length;
  encodeBootE820(opts.e820).copy(zp, BOOT_PARAMS.e820_table);

  const dst = mem.slice(loadAddr, footprint);
  dst.set(payload, 0);
  dst.fill(0, payload.length);
  if (initrd && opts.initrd) mem.slice(initrd.gpa, initrd.size).set(opts.initrd);
  mem.slice(CMDLINE_ADDR, CMDLINE_MAX).fill(0);
  mem.slice(CMDLINE_ADDR, cmdline.length).set(cmdline);
  mem.slice(ZERO_PAGE_ADDR, BOOT_PARAMS.size).set(zp);
  return { entry64: loadAddr + 0x200, zeroPage: ZERO_PAGE_ADDR, loadAddr, initrd, header: hdr };
}
