/**
 * Linux guests, as far as this host can check them: the boot-protocol
 * structures built for Debian's real cloud kernel (downloaded with
 * `apt-get download` into a cache under os.tmpdir()), the long-mode entry
 * state, the PVH initrd module, the CPUID leaves Linux reads, the PVM
 * refusal, `tsvmm image linux`, and bad kernels through the CLI. Booting the
 * kernel needs a hardware-KVM host (docs/linux-guests.md).
 */
import { strict as assert } from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import { BOOT_PARAMS, HDR, parseBzImage } from '../boot/bzimage';
import { checkKernel, isLinuxKernel, loadKernel } from '../boot/kernel';
import { BOOT_PD_ADDR, BOOT_PML4_ADDR, CMDLINE_ADDR, e820, lowRamEnd, MiB, RSDP_ADDR, ZERO_PAGE_ADDR } from '../contracts/layout';
import { CR0_PG, CR4_PAE, EFER_LMA, EFER_LME } from '../boot/long-mode';
import { MODLIST_ENTRY, PVH_MODLIST_ADDR, START_INFO } from '../boot/pvh';
import { GuestMemory } from '../contracts/memory';
import { vcpuCpuid, KVM_CPUID_FEATURES, KVM_FEATURE_CLOCKSOURCE2 } from '../vmm/cpuid';
import { detectSoftwareKvm } from '../kvm/pvm';
import { downloadDeb, resolveKernelPackage, IMAGE_FILES } from '../cli/image';
import { readCpio, S_IFREG } from '../cli/cpio';
import { makeElf, makeMemory, pvhNote } from './boot-fixtures';
import { GUEST, skipBecause, tsvmm } from './helpers/tsvmm';

const CACHE = path.join(os.tmpdir(), 'tsvmm-linux-cache');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'tsvmm-linux-'));

/** The Debian cloud kernel (a bzImage), fetched once into CACHE; or why it cannot be. */
function debianKernel(): { file: string } | { skip: string } {
  const have = (cmd: string): boolean => !spawnSync(cmd, ['--version'], { encoding: 'utf8' }).error;
  if (!have('apt-get') || !have('apt-cache') || !have('dpkg-deb')) return { skip: 'apt-get/apt-cache/dpkg-deb are not available on this host' };
  try {
    fs.mkdirSync(CACHE, { recursive: true });
    const cached = fs.readdirSync(CACHE).find((f) => f.startsWith('vmlinuz-'));
    if (cached) return { file: path.join(CACHE, cached) };
    const deb = downloadDeb(resolveKernelPackage(), CACHE);
    const x = fs.mkdtempSync(path.join(tmp, 'deb-'));
    const r = spawnSync('dpkg-deb', ['-x', deb, x]);
    if (r.status !== 0) return { skip: `dpkg-deb -x ${deb} failed` };
    const name = fs.readdirSync(path.join(x, 'boot')).find((f) => f.startsWith('vmlinuz-'))!;
    fs.copyFileSync(path.join(x, 'boot', name), path.join(CACHE, name));
    fs.rmSync(x, { recursive: true, force: true });
    return { file: path.join(CACHE, name) };
  } catch (e) {
    return { skip: `cannot download the Debian kernel with apt-get: ${(e as Error).message}` };
  }
}

/** Walk the boot page tables (4-level, 2 MiB pages) for `va`. */
function translate(mem: GuestMemory, cr3: number, va: number): number | undefined {
  const rd = (a: number): bigint => Buffer.from(mem.slice(a, 8)).readBigUInt64LE(0);
  const idx = (shift: number): number => Math.floor(va / 2 ** shift) % 512;
  const pml4e = rd(cr3 + idx(39) * 8);
  if (!(pml4e & 1n)) return undefined;
  const pdpte = rd(Number(pml4e & 0xffffffffff000n) + idx(30) * 8);
  if (!(pdpte & 1n)) return undefined;
  const pde = rd(Number(pdpte & 0xffffffffff000n) + idx(21) * 8);
  if (!(pde & 1n) || !(pde & 0x80n)) return undefined;
  return Number(pde & 0xfffffffe00000n) + (va % (2 * MiB));
}

function expectOneLineError(args: string[], pattern: RegExp, status?: number): void {
  const r = tsvmm(args, { timeoutMs: 30_000 });
  assert.equal(r.error, undefined, 'tsvmm hung or failed to start');
  assert.notEqual(r.status, 0, `expected failure; stdout: ${r.stdout}`);
  if (status !== undefined) assert.equal(r.status, status);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected exactly one line, got:\n${r.stderr}`);
  assert.match(lines[0], /^tsvmm: error: /);
  assert.match(lines[0], pattern);
}

describe('Linux guests', function () {
  this.timeout(120_000);
  let kernel: string | undefined;
  let skipWhy = '';
  before(function () {
    const k = debianKernel();
    if ('skip' in k) skipWhy = k.skip; else kernel = k.file;
  });
  const needKernel = (ctx: Mocha.Context): Buffer => {
    if (!kernel) skipBecause(ctx, skipWhy);
    return fs.readFileSync(kernel!);
  };

  describe('the Debian cloud kernel (bzImage)', () => {
    it('parses its setup header', function () {
      const buf = needKernel(this);
      const h = parseBzImage(buf);
      assert.ok(h.version >= 0x020f, `boot protocol 0x${h.version.toString(16)}`);
      assert.ok(h.loadflags & 1, 'LOADED_HIGH');
      assert.ok(h.xloadflags & 1, 'XLF_KERNEL_64');
      assert.equal(h.relocatable, true);
      assert.equal(h.prefAddress, 0x1000000);
      assert.equal(h.kernelAlignment, 0x200000);
      assert.ok(h.initSize > buf.length - h.setupSize, 'init_size covers the decompressed kernel');
      assert.ok(h.cmdlineSize >= 2047);
      assert.equal(buf.readUInt32LE(HDR.syssize) * 16 + h.setupSize <= buf.length, true);
      assert.equal(checkKernel(buf), 'bzimage');
      assert.equal(isLinuxKernel(buf), true);
    });

    it('gets the zero page, page tables and 64-bit entry state it expects', function () {
      const buf = needKernel(this);
      const memBytes = 256 * MiB;
      const mem = makeMemory(memBytes);
      const initrd = Buffer.alloc(300_000, 0x5a);
      const cmdline = 'console=ttyS0 root=/dev/vda rw';
      const r = loadKernel(mem, buf, { cmdline, initrd, memBytes, rsdp: RSDP_ADDR });
      const h = parseBzImage(buf);
      assert.equal(r.format, 'bzimage');
      // Kernel payload at pref_address.
      assert.ok(Buffer.from(mem.slice(h.prefAddress, 4096)).equals(buf.subarray(h.setupSize, h.setupSize + 4096)));
      // Zero page.
      const zp = Buffer.from(mem.slice(ZERO_PAGE_ADDR, BOOT_PARAMS.size));
      assert.equal(zp.toString('latin1', HDR.header, HDR.header + 4), 'HdrS');
      assert.equal(zp.readUInt16LE(HDR.boot_flag), 0xaa55);
      assert.equal(zp.readUInt16LE(HDR.version), h.version);
      assert.equal(zp[HDR.setup_sects], buf[HDR.setup_sects]);
      assert.equal(zp[HDR.type_of_loader], 0xff);
      assert.equal(zp.readUInt32LE(HDR.cmd_line_ptr), CMDLINE_ADDR);
      assert.equal(Buffer.from(mem.slice(CMDLINE_ADDR, cmdline.length + 1)).toString('latin1'), `${cmdline}\0`);
      assert.equal(zp.readBigUInt64LE(BOOT_PARAMS.acpi_rsdp_addr), BigInt(RSDP_ADDR));
      const rd = zp.readUInt32LE(HDR.ramdisk_image);
      assert.equal(zp.readUInt32LE(HDR.ramdisk_size), initrd.length);
      assert.equal(rd % 4096, 0);
      assert.ok(rd >= h.prefAddress + h.initSize && rd + initrd.length <= memBytes, `initrd at 0x${rd.toString(16)}`);
      assert.ok(Buffer.from(mem.slice(rd, initrd.length)).equals(initrd));
      const map = e820(memBytes);
      assert.equal(zp[BOOT_PARAMS.e820_entries], map.length);
      map.forEach((e, i) => {
        const o = BOOT_PARAMS.e820_table + i * BOOT_PARAMS.e820_entry_size;
        assert.deepEqual({ addr: Number(zp.readBigUInt64LE(o)), size: Number(zp.readBigUInt64LE(o + 8)), type: zp.readUInt32LE(o + 16) }, e);
      });
      // 64-bit entry state.
      const c = r.cpu;
      assert.equal(c.rip, h.prefAddress + 0x200);
      assert.equal(c.rsi, ZERO_PAGE_ADDR);
      assert.equal(c.cr0, 0x80000011, "CR0 = PG | ET | PE");
      assert.ok(CR0_PG === 0x80000000);
      assert.equal(c.cr0 & 1, 1);
      assert.equal(c.cr4 & CR4_PAE, CR4_PAE);
      assert.equal(c.efer, EFER_LME | EFER_LMA);
      assert.equal(c.cr3, BOOT_PML4_ADDR);
      assert.deepEqual([c.cs.selector, c.cs.l, c.cs.db, c.cs.type, c.cs.present], [0x10, 1, 0, 0xb, 1]);
      assert.deepEqual([c.ds.selector, c.ss.selector, c.es.selector], [0x18, 0x18, 0x18]);
      assert.equal(c.rflags & 0x200, 0, 'interrupts off');
      // The GDT in memory holds the same code/data descriptors (a reload finds what CS/DS say).
      const gdt = Buffer.from(mem.slice(c.gdt.base, c.gdt.limit + 1));
      assert.equal(gdt.readBigUInt64LE(0x10), 0x00af9b000000ffffn, 'flat 64-bit code');
      assert.equal(gdt.readBigUInt64LE(0x18), 0x00cf93000000ffffn, 'flat data');
      // Identity map covers the kernel, zero page, command line, initrd and the top of 4 GiB.
      for (const a of [ZERO_PAGE_ADDR, CMDLINE_ADDR, c.rip, h.prefAddress + h.initSize - 1, rd, rd + initrd.length - 1, 0xfee00000, 0xffffffff]) {
        assert.equal(translate(mem, c.cr3, a), a, `0x${a.toString(16)} identity-mapped`);
      }
      assert.equal(translate(mem, c.cr3, 0x1_0000_0000), undefined, 'nothing above 4 GiB');
      assert.ok(BOOT_PD_ADDR + 4 * 4096 <= 0x10000, 'page tables stay in low RAM');
    });
  });

  it('PVH: the initrd is module 0, below the end of low RAM and above the kernel', () => {
    const memBytes = 64 * MiB;
    const mem = makeMemory(memBytes);
    const elf = makeElf({ segments: [{ paddr: 0x100000, data: Buffer.alloc(0x2000, 0x90), memsz: 0x10000 }], notes: [pvhNote(0x100000)] });
    const initrd = Buffer.alloc(12345, 0x33);
    const r = loadKernel(mem, elf, { cmdline: 'x', initrd, memBytes, rsdp: RSDP_ADDR });
    assert.equal(r.format, 'pvh');
    assert.equal(r.cpu.rbx, 0x6000);
    const si = Buffer.from(mem.slice(r.cpu.rbx, START_INFO.size));
    assert.equal(si.readUInt32LE(START_INFO.nr_modules), 1);
    assert.equal(Number(si.readBigUInt64LE(START_INFO.modlist_paddr)), PVH_MODLIST_ADDR);
    const mod = Buffer.from(mem.slice(PVH_MODLIST_ADDR, MODLIST_ENTRY.entrySize));
    const gpa = Number(mod.readBigUInt64LE(MODLIST_ENTRY.paddr));
    assert.equal(Number(mod.readBigUInt64LE(MODLIST_ENTRY.size)), initrd.length);
    assert.equal(gpa % 4096, 0);
    assert.ok(gpa >= 0x110000 && gpa + initrd.length <= lowRamEnd(memBytes));
    assert.ok(Buffer.from(mem.slice(gpa, initrd.length)).equals(initrd));
    assert.equal(isLinuxKernel(elf), false, 'no Linux note: not Linux');
    assert.equal(isLinuxKernel(makeElf({ segments: [{ paddr: 0x100000, data: Buffer.alloc(16) }], notes: [pvhNote(0x100000), { name: 'Linux', type: 1, desc: Buffer.alloc(4) }] })), true);
    assert.throws(() => loadKernel(makeMemory(16 * MiB), elf, { cmdline: '', initrd: Buffer.alloc(16 * MiB), memBytes: 16 * MiB, rsdp: 0 }), /initrd of 16777216 bytes does not fit/);
  });

  it('CPUID: the KVM signature and KVM_GET_SUPPORTED_CPUID\'s feature leaf (kvmclock) reach the guest', () => {
    const features = (1 << KVM_FEATURE_CLOCKSOURCE2) | (1 << 24) | 1;
    const supported = [
      { fn: 0, index: 0, flags: 0, eax: 0xd, ebx: 0, ecx: 0, edx: 0 },
      { fn: 1, index: 0, flags: 0, eax: 0x806f8, ebx: 0, ecx: 0, edx: 0 },
      { fn: 0x40000000, index: 0, flags: 0, eax: 0x40000001, ebx: 0, ecx: 0, edx: 0 },
      { fn: KVM_CPUID_FEATURES, index: 0, flags: 0, eax: features, ebx: 0, ecx: 0, edx: 0 },
    ];
    const out = vcpuCpuid(supported, 1, 2, 2_000_000);
    const sig = out.find((e) => e.fn === 0x40000000)!;
    assert.equal(Buffer.concat([sig.ebx, sig.ecx, sig.edx].map((v) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; })).toString('latin1'), 'KVMKVMKVM\0\0\0');
    assert.ok(sig.eax >= KVM_CPUID_FEATURES);
    assert.equal(out.find((e) => e.fn === KVM_CPUID_FEATURES)!.eax, features);
    assert.ok(out.find((e) => e.fn === 1)!.ecx & (1 << 31), 'hypervisor bit');
  });

  it('detects a software-virtualized KVM', () => {
    const fake = fs.mkdtempSync(path.join(tmp, 'sys-'));
    const saved = process.env.TSVMM_SOFTWARE_KVM;
    delete process.env.TSVMM_SOFTWARE_KVM;
    try {
      assert.equal(detectSoftwareKvm(fake), undefined);
      fs.mkdirSync(path.join(fake, 'kvm_pvm'));
      assert.equal(detectSoftwareKvm(fake), 'PVM');
      process.env.TSVMM_SOFTWARE_KVM = '0';
      assert.equal(detectSoftwareKvm(fake), undefined);
    } finally {
      if (saved === undefined) delete process.env.TSVMM_SOFTWARE_KVM; else process.env.TSVMM_SOFTWARE_KVM = saved;
    }
  });

  describe('tsvmm run with a Linux kernel on this host', () => {
    const refusal = /^tsvmm: error: this host's KVM is software-virtualized \(PVM\): an unmodified Linux kernel cannot boot here; use a hardware-KVM host/;
    const pvm = (ctx: Mocha.Context): void => {
      if (!fs.existsSync('/dev/kvm') || !detectSoftwareKvm()) skipBecause(ctx, 'this host\'s KVM is not software-virtualized (PVM)');
    };
    it('refuses a bzImage in one line, at once', function () {
      pvm(this);
      needKernel(this);
      expectOneLineError(['run', '--kernel', kernel!], refusal, 1);
    });
    it('refuses --linux with an ELF kernel too', function () {
      pvm(this);
      assert.ok(fs.existsSync(GUEST), `${GUEST} is missing: npm install builds it (make -C guest)`);
      expectOneLineError(['run', '--linux', '--kernel', GUEST], refusal, 1);
    });
  });

  describe('bad kernels through the CLI', () => {
    const bad = (name: string, edit: (b: Buffer) => Buffer, re: RegExp): void => {
      it(name, function () {
        const f = path.join(tmp, name.replace(/\W+/g, '-'));
        fs.writeFileSync(f, edit(Buffer.from(needKernel(this))));
        expectOneLineError(['run', '--kernel', f], re, 2);
      });
    };
    bad('a truncated bzImage', (b) => b.subarray(0, 1 << 20), /bzImage truncated: the header says the kernel ends at 0x[0-9a-f]+ \(syssize\), the file has 1048576 bytes/);
    bad('a bzImage cut inside its setup header', (b) => b.subarray(0, 0x220), /bzImage truncated: 544 bytes, the setup header needs 620/);
    bad('wrong setup header magic', (b) => { b.write('HdrX', HDR.header, 'latin1'); return b; }, /not a bzImage: no "HdrS" setup header magic at 0x202/);
    bad('boot protocol too old', (b) => { b.writeUInt16LE(0x020b, HDR.version); return b; }, /kernel boot protocol 2\.11 is too old: 2\.12 or newer is needed/);
    it('a missing --initrd', () => expectOneLineError(['run', '--initrd', path.join(tmp, 'no-initrd')], /initrd .*no-initrd does not exist/, 2));
    it('an empty --initrd', () => {
      const f = path.join(tmp, 'empty-initrd');
      fs.writeFileSync(f, '');
      expectOneLineError(['run', '--initrd', f], /initrd .* is empty/, 2);
    });
    it('--linux with no image built', () => expectOneLineError(['run', '--linux', '--image-dir', path.join(tmp, 'none')], /no Linux image in .*none \(missing vmlinuz, initrd\.img, rootfs\.img\): run `tsvmm image linux --out/, 2));
  });

  it('tsvmm image linux builds vmlinuz, an initramfs with /init and the virtio modules, and a root file system', function () {
    needKernel(this);
    const out = path.join(tmp, 'image');
    const r = tsvmm(['image', 'linux', '--out', out, '--cache', CACHE], { timeoutMs: 100_000 });
    assert.equal(r.status, 0, r.stderr);
    for (const f of Object.values(IMAGE_FILES)) assert.ok(fs.statSync(path.join(out, f)).size > 0, f);
    assert.ok(fs.readFileSync(path.join(out, 'vmlinuz')).equals(fs.readFileSync(kernel!)), 'vmlinuz is the Debian kernel');
    const entries = readCpio(zlib.gunzipSync(fs.readFileSync(path.join(out, 'initrd.img'))));
    const byName = new Map(entries.map((e) => [e.name, e]));
    for (const n of ['init', 'bin/busybox', 'bin/sh', 'dev/console', 'lib/modules/virtio_mmio.ko', 'lib/modules/virtio_blk.ko', 'lib/modules/virtio_net.ko', 'lib/modules/virtio.ko', 'lib/modules/virtio_ring.ko']) {
      assert.ok(byName.has(n), `initramfs has ${n}`);
    }
    const init = byName.get('init')!;
    assert.equal(init.mode, S_IFREG | 0o755);
    const script = init.data!.toString();
    assert.match(script, /^#!\/bin\/sh\n/);
    for (const w of ['mount -t proc', 'mount -t sysfs', 'mount -t devtmpfs', 'insmod', '/dev/vda', 'cttyhack sh']) assert.ok(script.includes(w), `init does ${w}`);
    const order = /for m in ([^;]+);/.exec(script)![1].split(' ');
    assert.ok(order.indexOf('virtio_ring') < order.indexOf('virtio_mmio') && order.indexOf('virtio') < order.indexOf('virtio_blk'), `dependencies first: ${order.join(' ')}`);
    assert.ok(byName.get('bin/busybox')!.data!.subarray(0, 4).equals(Buffer.from('\x7fELF', 'latin1')));
    const rootfs = fs.readFileSync(path.join(out, 'rootfs.img'));
    assert.equal(rootfs.length, 64 * MiB);
    if (!spawnSync('mke2fs', ['-V']).error) assert.equal(rootfs.readUInt16LE(1024 + 56), 0xef53, 'ext superblock magic');
    assert.match(r.stdout, /boot it with: tsvmm run --linux --image-dir /);
  });
});
