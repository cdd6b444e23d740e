import * as assert from 'assert';
import { parseBzImage, loadBzImage, HDR, BOOT_PARAMS } from '../boot/bzimage';
import { e820, MiB, CMDLINE_ADDR, ZERO_PAGE_ADDR } from '../contracts/layout';
import { makeMemory } from './boot-fixtures';

interface Fake {
  version?: number; loadflags?: number; xloadflags?: number; setupSects?: number; prefAddress?: bigint;
  initSize?: number; cmdlineSize?: number; payload?: Buffer; relocatable?: number; kernelAlignment?: number;
  initrdAddrMax?: number;
}

/** A synthetic bzImage: boot sector + setup header, setup sectors, then the 64-bit payload. */
function fakeBzImage(f: Fake = {}): Buffer {
  const setupSects = f.setupSects ?? 4;
  const payload = f.payload ?? Buffer.from('64-bit kernel payload');
  const setupSize = ((setupSects || 4) + 1) * 512; // 0 means 4
  const b = Buffer.alloc(setupSize + payload.length);
  b[HDR.setup_sects] = setupSects;
  b.writeUInt16LE(0xffff, HDR.vid_mode);
  b.writeUInt16LE(0xaa55, HDR.boot_flag);
  b[HDR.jump] = 0xeb;
  b[HDR.jump + 1] = HDR.end - 0x202; // header ends at 0x26c
  b.write('HdrS', HDR.header, 'ascii');
  b.writeUInt16LE(f.version ?? 0x020f, HDR.version);
  b[HDR.loadflags] = f.loadflags ?? 0x01;
  b.writeUInt32LE(f.initrdAddrMax ?? 0x7fffffff, HDR.initrd_addr_max);
  b.writeUInt32LE(f.kernelAlignment ?? 0x200000, HDR.kernel_alignment);
  b[HDR.relocatable_kernel] = f.relocatable ?? 1;
  b.writeUInt16LE(f.xloadflags ?? 0x7f, HDR.xloadflags);
  b.writeUInt32LE(f.cmdlineSize ?? 2047, HDR.cmdline_size);
  b.writeBigUInt64LE(f.prefAddress ?? 0x1000000n, HDR.pref_address);
  b.writeUInt32LE(f.initSize ?? 0x10000, HDR.init_size);
  b.writeUInt32LE(0xdeadbeef, 0x264); // handover_offset: must be copied into the zero page
  payload.copy(b, setupSize);
  return b;
}

describe('boot/bzimage', () => {
  it('parses the setup header', () => {
    const h = parseBzImage(fakeBzImage({ setupSects: 30, version: 0x020d }));
    assert.strictEqual(h.setupSects, 30);
    assert.strictEqual(h.setupSize, 31 * 512);
    assert.strictEqual(h.version, 0x020d);
    assert.strictEqual(h.prefAddress, 0x1000000);
    assert.strictEqual(h.kernelAlignment, 0x200000);
    assert.strictEqual(h.relocatable, true);
    assert.strictEqual(h.cmdlineSize, 2047);
    assert.strictEqual(h.initSize, 0x10000);
    assert.strictEqual(h.headerLength, 0x26c - 0x1f1);
    assert.strictEqual(parseBzImage(fakeBzImage({ setupSects: 0 })).setupSects, 4, 'setup_sects 0 means 4');
  });

  const bad: [string, () => Buffer, RegExp][] = [
    ['an empty file', () => Buffer.alloc(0), /^bzImage truncated: 0 bytes, the setup header needs 620$/],
    ['a truncated header', () => fakeBzImage().subarray(0, 0x250), /^bzImage truncated: 592 bytes/],
    ['a file cut inside the setup code', () => fakeBzImage({ setupSects: 4 }).subarray(0, 0x400), /^bzImage truncated: setup code \(4 sectors\) ends at 0xa00/],
    ['wrong magic', () => { const b = fakeBzImage(); b.write('HdrX', 0x202); return b; }, /^not a bzImage: no "HdrS" setup header magic at 0x202$/],
    ['an ELF vmlinux', () => { const b = Buffer.alloc(4096); b.set([0x7f, 0x45, 0x4c, 0x46]); return b; }, /^not a bzImage/],
    ['a bad boot_flag', () => { const b = fakeBzImage(); b.writeUInt16LE(0, 0x1fe); return b; }, /boot_flag at 0x1fe is 0x0, expected 0xaa55/],
    ['boot protocol 2.11', () => fakeBzImage({ version: 0x020b }), /^kernel boot protocol 2\.11 is too old: 2\.12 or newer/],
    ['boot protocol 2.02', () => fakeBzImage({ version: 0x0202 }), /boot protocol 2\.02 is too old/],
    ['a zImage', () => fakeBzImage({ loadflags: 0 }), /zImage \(loadflags.LOADED_HIGH clear\)/],
    ['a 32-bit-only kernel', () => fakeBzImage({ xloadflags: 0x1e }), /no 64-bit entry point \(xloadflags.XLF_KERNEL_64 clear\)/],
    ['odd kernel_alignment', () => fakeBzImage({ kernelAlignment: 0x300000 }), /kernel_alignment 0x300000 is not a power of two/],
    ['pref_address above 4 GiB', () => fakeBzImage({ prefAddress: 0x100000000n }), /pref_address 0x100000000 is above 4 GiB/],
  ];
  for (const [what, make, re] of bad) {
    it(`rejects ${what} with a clear error`, () => {
      const check = (e: unknown): boolean => e instanceof Error && re.test(e.message) && !e.message.includes('\n');
      assert.throws(() => parseBzImage(make()), check);
      assert.throws(() => loadBzImage(makeMemory(64 * MiB), make(), { cmdline: '', e820: e820(64 * MiB) }), check);
    });
  }

  it('loads the kernel and builds the zero page', () => {
    const mem = makeMemory(64 * MiB);
    mem.slice(0x1000000, 0x10000).fill(0x77);
    const payload = Buffer.from('the protected-mode kernel');
    const kernel = fakeBzImage({ payload });
    const map = e820(64 * MiB);
    const initrd = Buffer.alloc(10000, 0x42);
    const r = loadBzImage(mem, kernel, { cmdline: 'console=ttyS0 quiet', initrd, e820: map, rsdp: 0xe0000 });
    assert.strictEqual(r.entry64, 0x1000200);
    assert.strictEqual(r.zeroPage, ZERO_PAGE_ADDR);
    assert.strictEqual(Buffer.from(mem.slice(0x1000000, payload.length)).toString(), payload.toString());
    assert.ok(mem.slice(0x1000000 + payload.length, 0x10000 - payload.length).every((x) => x === 0), 'init_size area zeroed');

    const zp = Buffer.from(mem.slice(ZERO_PAGE_ADDR, 4096));
    // Setup header copied from the file, then the loader's fields on top.
    assert.strictEqual(zp.toString('ascii', 0x202, 0x206), 'HdrS');
    assert.strictEqual(zp.readUInt16LE(0x206), 0x020f);
    assert.strictEqual(zp.readUInt16LE(0x1fe), 0xaa55);
    assert.strictEqual(zp.readUInt32LE(0x264), 0xdeadbeef, 'header copied up to its end');
    assert.strictEqual(zp.readUInt32LE(0x26c), 0, 'nothing copied past the header');
    assert.strictEqual(zp[0x210], 0xff, 'type_of_loader');
    assert.strictEqual(zp.readUInt32LE(0x228), CMDLINE_ADDR, 'cmd_line_ptr');
    assert.strictEqual(zp.readUInt32LE(0x0c8), 0, 'ext_cmd_line_ptr');
    assert.strictEqual(Buffer.from(mem.slice(CMDLINE_ADDR, 20)).toString('latin1'), 'console=ttyS0 quiet\0');
    assert.strictEqual(zp.readBigUInt64LE(0x070), 0xe0000n, 'acpi_rsdp_addr');
    // initrd: page aligned, at the top of RAM (below initrd_addr_max), above the kernel.
    const rd = zp.readUInt32LE(0x218);
    assert.strictEqual(rd, Math.floor((64 * MiB - 10000) / 4096) * 4096);
    assert.strictEqual(zp.readUInt32LE(0x21c), 10000);
    assert.strictEqual(zp.readUInt32LE(0x0c0), 0);
    assert.strictEqual(zp.readUInt32LE(0x0c4), 0);
    assert.deepStrictEqual(r.initrd, { gpa: rd, size: 10000 });
    assert.ok(mem.slice(rd, 10000).every((x) => x === 0x42));
    // e820
    assert.strictEqual(zp[0x1e8], map.length);
    for (let i = 0; i < map.length; i++) {
      const o = 0x2d0 + 20 * i;
      assert.deepStrictEqual(
        { addr: Number(zp.readBigUInt64LE(o)), size: Number(zp.readBigUInt64LE(o + 8)), type: zp.readUInt32LE(o + 16) },
        map[i],
      );
    }
    assert.strictEqual(BOOT_PARAMS.e820_table, 0x2d0);
  });

  it('throws only one-line Errors on random and truncated input (fuzz)', () => {
    let seed = 777;
    const rnd = (): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed; };
    const base = fakeBzImage();
    const mem = makeMemory(64 * MiB);
    for (let i = 0; i < 3000; i++) {
      let b: Buffer;
      if (i % 2) b = base.subarray(0, rnd() % (base.length + 1));
      else {
        b = Buffer.from(base);
        for (let k = 0; k < 1 + (rnd() % 4); k++) b[0x1f1 + (rnd() % (0x26c - 0x1f1))] = rnd() & 0xff;
      }
      try {
        loadBzImage(mem, b, { cmdline: 'console=ttyS0', e820: e820(64 * MiB), initrd: Buffer.alloc(rnd() % 8192) });
      } catch (e) {
        assert.ok(e instanceof Error && !(e instanceof RangeError) && !e.message.includes('\n'), `iteration ${i}: ${String(e)}`);
      }
    }
  });

  it('honours initrd_addr_max', () => {
    const mem = makeMemory(64 * MiB);
    const r = loadBzImage(mem, fakeBzImage({ initrdAddrMax: 0x2ffffff }), { cmdline: '', initrd: Buffer.alloc(4096), e820: e820(64 * MiB) });
    assert.strictEqual(r.initrd!.gpa, 0x3000000 - 4096);
  });

  it('refuses what does not fit', () => {
    const map = e820(16 * MiB);
    assert.throws(() => loadBzImage(makeMemory(16 * MiB), fakeBzImage(), { cmdline: '', e820: map }), /kernel needs 0x1000000\.\.0x1010000 \(init_size 0x10000\) but that is not all guest RAM \(16 MiB\)/);
    const mem = makeMemory(32 * MiB);
    assert.throws(() => loadBzImage(mem, fakeBzImage(), { cmdline: '', e820: map, initrd: Buffer.alloc(16 * MiB) }), /initrd of 16777216 bytes does not fit/);
    assert.throws(() => loadBzImage(mem, fakeBzImage({ cmdlineSize: 10 }), { cmdline: 'x'.repeat(11), e820: map }), /command line too long: 11 bytes, the limit is 10 bytes/);
    loadBzImage(mem, fakeBzImage({ cmdlineSize: 10 }), { cmdline: 'x'.repeat(10), e820: map });
    assert.throws(() => loadBzImage(mem, fakeBzImage(), { cmdline: 'y'.repeat(5000), e820: map }), /the limit is 2047 bytes/);
    assert.throws(() => loadBzImage(mem, fakeBzImage(), { cmdline: '', e820: new Array(129).fill(map[0]) }), /129 entries/);
  });
});
