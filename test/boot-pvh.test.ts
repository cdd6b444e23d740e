import * as assert from 'assert';
import * as fs from 'fs';
import * as path from 'path';
import {
  loadPvh, writeStartInfo, START_INFO, MEMMAP_ENTRY, MODLIST_ENTRY, HVM_START_MAGIC, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR,
} from '../boot/pvh';
import { parseElf } from '../boot/elf';
import { e820, MiB, CMDLINE_ADDR, PVH_START_INFO_ADDR, BOOT_GDT_ADDR } from '../contracts/layout';
import { pvhCpuState, writeBootGdt, encodeGdtEntry, BOOT_CODE, BOOT_DATA, BOOT_TSS } from '../boot/cpu-state';
import { makeElf, makeMemory, pvhNote } from './boot-fixtures';

describe('boot/pvh', () => {
  it('has the exact hvm_start_info v1 layout (xen public/arch-x86/hvm/start_info.h)', () => {
    assert.deepStrictEqual(START_INFO, {
      magic: 0, version: 4, flags: 8, nr_modules: 12, modlist_paddr: 16, cmdline_paddr: 24,
      rsdp_paddr: 32, memmap_paddr: 40, memmap_entries: 48, reserved: 52, size: 56,
    });
    assert.deepStrictEqual(MEMMAP_ENTRY, { addr: 0, size: 8, type: 16, reserved: 20, entrySize: 24 });
    assert.deepStrictEqual(MODLIST_ENTRY, { paddr: 0, size: 8, cmdline_paddr: 16, reserved: 24, entrySize: 32 });
  });

  it('loads PT_LOAD segments, zeroes bss and returns the note entry (8-byte note)', () => {
    const mem = makeMemory(64 * MiB);
    mem.slice(0x200000, 0x3000).fill(0xee); // stale bytes that the bss must clear
    const kernel = makeElf({
      segments: [
        { paddr: 0x100000, data: Buffer.from('TEXT'), memsz: 4 },
        { paddr: 0x200000, data: Buffer.from([1, 2, 3]), memsz: 0x2000 },
      ],
      notes: [pvhNote(0x100002, 8)],
    });
    const { entry } = loadPvh(mem, kernel);
    assert.strictEqual(entry, 0x100002);
    assert.strictEqual(Buffer.from(mem.slice(0x100000, 4)).toString(), 'TEXT');
    assert.deepStrictEqual([...mem.slice(0x200000, 4)], [1, 2, 3, 0]);
    assert.ok(mem.slice(0x200003, 0x2000 - 3).every((b) => b === 0), 'bss zeroed');
    assert.strictEqual(mem.slice(0x202000, 1)[0], 0xee, 'nothing written past memsz');
  });

  it('accepts a 4-byte entry note', () => {
    const kernel = makeElf({ segments: [{ paddr: 0x100000, data: Buffer.alloc(8) }], notes: [pvhNote(0x100004, 4)] });
    assert.strictEqual(loadPvh(makeMemory(16 * MiB), kernel).entry, 0x100004);
  });

  it('rejects kernels without a PVH note, or with bad segments', () => {
    const mem = makeMemory(16 * MiB);
    const seg = [{ paddr: 0x100000, data: Buffer.alloc(8) }];
    assert.throws(() => loadPvh(mem, makeElf({ segments: seg })), /^Error: kernel has no PVH entry note \(XEN_ELFNOTE_PHYS32_ENTRY\)$/);
    assert.throws(() => loadPvh(mem, makeElf({ segments: seg, notes: [{ name: 'Xen', type: 18, desc: Buffer.alloc(2) }] })), /has 2 bytes; expected 4 or 8/);
    assert.throws(() => loadPvh(mem, makeElf({ segments: seg, notes: [pvhNote(0x100000, 4)], type: 3 })), /only ET_EXEC/);
    assert.throws(() => loadPvh(mem, makeElf({ segments: [{ paddr: 0x80000, data: Buffer.alloc(8) }], notes: [pvhNote(0x80000)] })), /segment 1 at 0x80000 is below 1 MiB/);
    assert.throws(() => loadPvh(mem, makeElf({ segments: [{ paddr: 0xf00000, data: Buffer.alloc(8), memsz: 0x200000 }], notes: [pvhNote(0xf00000)] })), /segment 1 \(0xf00000\.\.0x1100000\) does not fit in guest RAM \(16 MiB\)/);
    assert.throws(() => loadPvh(mem, makeElf({ segments: seg, notes: [pvhNote(0x300000)] })), /entry 0x300000 is not inside any loadable segment/);
    const hi = Buffer.alloc(8); hi.writeBigUInt64LE(0x100000000n);
    assert.throws(() => loadPvh(mem, makeElf({ segments: seg, notes: [{ name: 'Xen', type: 18, desc: hi }] })), /above 4 GiB/);
  });

  it('writes start_info, memmap and cmdline field by field', () => {
    const mem = makeMemory(64 * MiB);
    mem.slice(PVH_START_INFO_ADDR, 0x2000).fill(0x5a); // stale bytes must not survive
    const map = e820(64 * MiB);
    const addr = writeStartInfo(mem, { cmdline: 'console=ttyS0 root=/dev/vda', memmap: map, rsdp: 0xe0000 });
    assert.strictEqual(addr, 0x6000);
    const v = mem.view(addr, START_INFO.size);
    assert.strictEqual(v.getUint32(0, true), 0x336ec578);
    assert.strictEqual(v.getUint32(0, true), HVM_START_MAGIC);
    assert.strictEqual(v.getUint32(4, true), 1, 'version');
    assert.strictEqual(v.getUint32(8, true), 0, 'flags');
    assert.strictEqual(v.getUint32(12, true), 0, 'nr_modules');
    assert.strictEqual(v.getBigUint64(16, true), 0n, 'modlist_paddr');
    assert.strictEqual(v.getBigUint64(24, true), 0x7000n, 'cmdline_paddr');
    assert.strictEqual(v.getBigUint64(32, true), 0xe0000n, 'rsdp_paddr');
    assert.strictEqual(v.getBigUint64(40, true), 0x6038n, 'memmap_paddr');
    assert.strictEqual(PVH_MEMMAP_ADDR, 0x6038);
    assert.strictEqual(v.getUint32(48, true), 3, 'memmap_entries');
    assert.strictEqual(v.getUint32(52, true), 0, 'reserved');
    const m = mem.view(0x6038, 3 * 24);
    const got = [0, 1, 2].map((i) => ({
      addr: Number(m.getBigUint64(i * 24, true)), size: Number(m.getBigUint64(i * 24 + 8, true)), type: m.getUint32(i * 24 + 16, true),
      reserved: m.getUint32(i * 24 + 20, true),
    }));
    assert.deepStrictEqual(got, map.map((e) => ({ ...e, reserved: 0 })));
    const cl = Buffer.from(mem.slice(CMDLINE_ADDR, 29));
    assert.strictEqual(cl.toString('latin1'), 'console=ttyS0 root=/dev/vda\0\0');
  });

  it('passes an initrd as module 0', () => {
    const mem = makeMemory(64 * MiB);
    writeStartInfo(mem, { cmdline: '', memmap: e820(64 * MiB), rsdp: 0, initrd: { gpa: 0x2000000, size: 12345 } });
    const v = mem.view(0x6000, START_INFO.size);
    assert.strictEqual(v.getUint32(12, true), 1);
    assert.strictEqual(Number(v.getBigUint64(16, true)), PVH_MODLIST_ADDR);
    const mod = mem.view(PVH_MODLIST_ADDR, 32);
    assert.strictEqual(mod.getBigUint64(0, true), 0x2000000n);
    assert.strictEqual(mod.getBigUint64(8, true), 12345n);
    assert.strictEqual(mod.getBigUint64(16, true), 0n);
    assert.ok(PVH_MODLIST_ADDR + 32 <= CMDLINE_ADDR);
  });

  it('rejects an over-long command line and an oversized memmap', () => {
    const mem = makeMemory(16 * MiB);
    const map = e820(16 * MiB);
    writeStartInfo(mem, { cmdline: 'x'.repeat(4095), memmap: map, rsdp: 0 });
    assert.strictEqual(mem.slice(CMDLINE_ADDR + 4095, 1)[0], 0);
    assert.throws(() => writeStartInfo(mem, { cmdline: 'x'.repeat(4096), memmap: map, rsdp: 0 }), /command line too long: 4096 bytes, the limit is 4095 bytes/);
    assert.throws(() => writeStartInfo(mem, { cmdline: '', memmap: new Array(129).fill(map[0]), rsdp: 0 }), /129 entries; at most 128/);
  });

  it('describes the PVH entry CPU state and writes a matching GDT', () => {
    const s = pvhCpuState(0x1000abc, 0x6000);
    assert.strictEqual(s.rip, 0x1000abc);
    assert.strictEqual(s.rbx, 0x6000);
    assert.strictEqual(s.rflags, 2);
    assert.strictEqual(s.cr0, 0x11);
    assert.strictEqual(s.cr4, 0);
    assert.strictEqual(s.efer, 0);
    assert.deepStrictEqual(s.cs, { base: 0, limit: 0xffffffff, selector: 0x10, type: 0xb, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0 });
    for (const d of [s.ds, s.es, s.fs, s.gs, s.ss]) assert.deepStrictEqual(d, { ...s.cs, selector: 0x18, type: 3 });
    assert.strictEqual(s.tr.selector, 0x20);
    assert.strictEqual(s.tr.type, 0xb);
    assert.strictEqual(s.tr.present, 1);
    assert.strictEqual(s.ldt.unusable, 1);
    // Well-known flat descriptors: 32-bit code 0x00cf9b000000ffff, data 0x00cf93000000ffff.
    assert.strictEqual(encodeGdtEntry(BOOT_CODE), 0x00cf9b000000ffffn);
    assert.strictEqual(encodeGdtEntry(BOOT_DATA), 0x00cf93000000ffffn);
    assert.strictEqual(encodeGdtEntry(BOOT_TSS), 0x00008b0000000067n);
    const mem = makeMemory(16 * MiB);
    writeBootGdt(mem);
    const g = mem.view(BOOT_GDT_ADDR, 40);
    assert.strictEqual(g.getBigUint64(0x10, true), 0x00cf9b000000ffffn);
    assert.strictEqual(g.getBigUint64(0x18, true), 0x00cf93000000ffffn);
    assert.strictEqual(s.gdt.base, BOOT_GDT_ADDR);
    assert.strictEqual(s.gdt.limit, 39);
  });

  const guestElf = path.join(__dirname, '../../guest/out/guest.elf');
  it('loads the real test guest (guest/out/guest.elf)', function () {
    assert.ok(fs.existsSync(guestElf), `${guestElf} is missing: npm install builds it (make -C guest)`);
    const kernel = fs.readFileSync(guestElf);
    const mem = makeMemory(64 * MiB);
    const { entry } = loadPvh(mem, kernel);
    const img = parseElf(kernel);
    assert.ok(img.segments.some((seg) => entry >= seg.paddr && entry < seg.paddr + seg.memsz));
  });
});
